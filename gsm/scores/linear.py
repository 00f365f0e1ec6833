"""Score models. The linear score s(y) = −A y holds one matrix per replicate and per noise level.

A is stored as a tensor of shape (R, L, d, d): R independent replicates (trained as one batched
program) and L noise levels (L = 1 for Langevin at a fixed σ; one per timestep for DDPM/DDIM).
In PyTorch's `nn.Linear` convention W y, A = −W.
"""
from __future__ import annotations

import torch
from torch import nn

from gsm.scores.base import ScoreModel


def spd_inverse(M: torch.Tensor) -> torch.Tensor:
    """M⁻¹ for symmetric positive-definite M (..., d, d), by Cholesky (`cholesky_ex`, `cholesky_inverse`).

    Not torch.linalg.inv: once torch.set_num_threads(n ≥ 2) has been called (the `threads` knob, the
    benchmark's --threads), torch's batched LU runs MKL's getrf on several matrices at once and corrupts the
    pivots for d ≳ 100 ("Intel oneMKL ERROR ... DLASWP", pytorch/pytorch#141358, #142815). Cholesky is not
    affected. Where the factorisation fails (M not numerically positive-definite, or not finite), LU is used."""
    L, info = torch.linalg.cholesky_ex(M)
    if bool((info != 0).any()):
        return torch.linalg.inv(M)
    return torch.cholesky_inverse(L)


def matrix_inverse(M: torch.Tensor) -> torch.Tensor:
    """M⁻¹ (..., d, d): `spd_inverse` (Cholesky) when M is symmetric to rounding (a second moment X̂ = xᵀx/N
    need not be bitwise symmetric), LU otherwise (e.g. the bidiagonal blocks of Opitz' formula, 3×3, where
    torch's batched-LU bug does not arise)."""
    Mt = M.transpose(-1, -2)
    if float((M - Mt).abs().max()) <= 1e-10 * float(M.abs().max()):
        return spd_inverse(0.5 * (M + Mt))
    return torch.linalg.inv(M)


def dsm_optimum(cov: torch.Tensor, alphas: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """Minimiser of the DSM loss at each level l, A_l = (α_l² C + s_l² I)⁻¹.

    With y = α x + s z and loss ½‖s·s_A(y) + z‖², ∇L = s²(A(α²C + s²I) − I) (theory note §1),
    where C is the second moment of the data: C = Σ gives the exact score (oracle), C = Σ̂ the
    empirical minimiser. Shapes: cov (..., d, d) symmetric PSD, alphas and stds (L,) → (..., L, d, d),
    float64 (inverted by Cholesky where C is symmetric, `matrix_inverse`; by LU for the non-symmetric
    blocks of Opitz' formula).
    """
    cov = cov.to(torch.float64)
    a2 = alphas.to(cov.device, torch.float64).pow(2).view(-1, 1, 1)
    s2 = stds.to(cov.device, torch.float64).pow(2).view(-1, 1, 1)
    eye = torch.eye(cov.shape[-1], dtype=torch.float64, device=cov.device)
    return matrix_inverse(a2 * cov.unsqueeze(-3) + s2 * eye)


class LinearScore(ScoreModel):
    """s(y, l) = −A_l y, with A of shape (R, L, d, d), trained by DSM-SGD.

    Args:
        dim: d.  replicates: R.  levels: L, the number of noise levels.
        init: A₀ = 0 ("zeros") or I ("identity").
        symmetric: train with the symmetrised gradient (g + gᵀ)/2, so A stays symmetric
            (the symmetric variant of the theory note §5.3).
    """

    linear = True
    requires_training = True

    def __init__(self, dim: int, replicates: int = 1, levels: int = 1, init: str = "zeros",
                 symmetric: bool = False):
        super().__init__()
        if init not in ("zeros", "identity"):
            raise ValueError(f"model.init must be one of zeros | identity, got {init}")
        A = torch.zeros(replicates, levels, dim, dim)
        if init == "identity":
            A += torch.eye(dim)
        self.A = nn.Parameter(A, requires_grad=False)
        self.symmetric = bool(symmetric)

    def forward(self, y: torch.Tensor, level: int = 0) -> torch.Tensor:
        """Score at level l: y (R, M, d) → −y A_lᵀ (R, M, d)."""
        return -y @ self.A[:, level].transpose(-1, -2)

    def matrices(self) -> torch.Tensor:
        """A as float64, (R, L, d, d): what the exact sampler laws need."""
        return self.A.detach().to(torch.float64)

    @torch.no_grad()
    def set_matrices(self, A: torch.Tensor) -> None:
        self.A.copy_(A.to(self.A.dtype))


class OracleScore(LinearScore):
    """The exact score of the noised target, A_l = (α_l² Σ + s_l² I)⁻¹ (N(0, Σ+σ²I) for Langevin).
    It needs no training and isolates the sampler's own error."""

    requires_training = False
    exact = True
