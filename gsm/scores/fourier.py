"""Linear scores diagonal in the 2-D Fourier basis (data.kind=texture): s(y) = −A y with A a real
symmetric circulant, A = F* diag(a) F, i.e. s(y) = −irfft2(a · rfft2(y)), a circular convolution.
`FourierLinearScore` is trained (state a (R, L, n, n//2+1)); `FourierOracleScore` is the exact score
a_l(ω) = 1/(α_l² λ(ω) + s_l²) of the noised texture (docs/textures.md)."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from gsm.scores.base import ScoreModel

_F64 = torch.float64


# ----------------------------------------------------------------------------------------- model

def apply_circulant(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A y for the symmetric circulant A of eigenvalues a (…, n, n//2+1): irfft2(a · rfft2(y))."""
    n = y.shape[-1]
    return torch.fft.irfft2(a.to(y.dtype) * torch.fft.rfft2(y), s=(y.shape[-2], n))


class FourierLinearScore(ScoreModel):
    """s(y, l) = −A_l y, A_l a symmetric circulant (a circular convolution) of eigenvalues a_l(ω).

    Args:
        size: n (the texture is n×n; d = n²).  replicates: R.  levels: L noise levels.
        init: a₀ = 0 ("zeros"), 1 ("identity") or 1/s_l² ("noise": the DSM optimum where the data
            have no power, so the many frequencies with λ ≪ s² start next to their optimum).
        noise_stds: s_l (L,), needed by init="noise".
        oracle: deprecated, use `FourierOracleScore` (model=fourier_oracle).
        stds: deprecated name of noise_stds.
    The state `a` is (R, L, n, n//2+1) on the rfft2 half-plane (a(−ω) = a(ω)).
    """

    linear = True
    symmetric = True
    data_kind = "texture"

    def __init__(self, size: int | None = None, replicates: int = 1, levels: int = 1, init: str = "zeros",
                 noise_stds: torch.Tensor | None = None, dim: int | None = None, oracle: bool | None = None,
                 stds: torch.Tensor | None = None):
        super().__init__()
        if stds is not None:
            warnings.warn("FourierLinearScore(stds=...) is deprecated: use noise_stds", FutureWarning, stacklevel=2)
            noise_stds = stds if noise_stds is None else noise_stds
        if oracle:
            warnings.warn("model.oracle=true is deprecated: use model=fourier_oracle (FourierOracleScore)",
                          FutureWarning, stacklevel=2)
            self.requires_training = False
        if size is None:
            raise ValueError(f"model=fourier_linear needs data=texture (an n×n stationary target), got a "
                             f"d-dimensional target (data.dim={dim})")
        n = int(size)
        self.init = init
        self.a = nn.Parameter(torch.zeros(replicates, levels, n, n // 2 + 1), requires_grad=False)
        self.a.data += initial_coefficients(init, levels, noise_stds).view(-1, 1, 1).to(self.a.dtype)

    @property
    def size(self) -> int:
        return self.a.shape[-2]

    def forward(self, y: torch.Tensor, level: int = 0) -> torch.Tensor:
        """Score at level l: y (R, M, n, n) → −A_l y (R, M, n, n)."""
        return -apply_circulant(self.a[:, level].unsqueeze(1), y)

    def coefficients(self) -> torch.Tensor:
        """a as float64, (R, L, n, n//2+1)."""
        return self.a.detach().to(_F64)

    def matrices(self) -> torch.Tensor:
        """The full-matrix A (R, L, d, d) (small n only: tests, comparisons with gsm.scores.linear.LinearScore)."""
        return circulant_matrices(self.coefficients())

    @torch.no_grad()
    def set_coefficients(self, a: torch.Tensor) -> None:
        self.a.copy_(a.to(self.a.dtype).expand_as(self.a))



class FourierOracleScore(FourierLinearScore):
    """The exact score of the noised texture, a_l(ω) = 1/(α_l² λ(ω) + s_l²): set, not trained (the
    Fourier-diagonal counterpart of `gsm.scores.linear.OracleScore`)."""

    requires_training = False
    exact = True

def initial_coefficients(init: str, levels: int, stds=None) -> torch.Tensor:
    """a₀ per level (L,) float64 for init = zeros | identity | noise (1/s_l²)."""
    if init == "zeros":
        return torch.zeros(levels, dtype=_F64)
    if init == "identity":
        return torch.ones(levels, dtype=_F64)
    if init == "noise":
        if stds is None or len(stds) != levels:
            raise ValueError(f"model.init=noise needs the {levels} noise levels s_l (stds), got {stds}")
        return 1.0 / torch.as_tensor(stds, dtype=_F64) ** 2
    raise ValueError(f"model.init must be one of zeros | identity | noise, got {init}")


def circulant_matrices(a: torch.Tensor) -> torch.Tensor:
    """The d×d matrices of the circulants with eigenvalues a (…, n, n//2+1), by applying them to the
    pixel basis (row-major flattening, as (…, n, n).reshape(…, d)). → (…, d, d) float64."""
    n = a.shape[-2]
    d = n * n
    eye = torch.eye(d, dtype=_F64, device=a.device).view(d, n, n)
    cols = apply_circulant(a.to(_F64).unsqueeze(-3), eye)        # (…, d, n, n): column j = A e_j
    return cols.flatten(-2).transpose(-1, -2)


def dsm_optimum_fourier(power: torch.Tensor, alphas: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """a_l(ω) = 1/(α_l² P(ω) + s_l²): the DSM minimiser of the Fourier model for the per-frequency
    second moment P (λ: exact score; the periodogram P̂ of the data: empirical optimum).
    (..., n, h), (L,) → (..., L, n, h) float64."""
    P = power.to(_F64).unsqueeze(-3)
    return 1.0 / (alphas.to(P.device, _F64).pow(2).view(-1, 1, 1) * P + stds.to(P.device, _F64).pow(2).view(-1, 1, 1))
