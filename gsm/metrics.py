"""Bures–Wasserstein distance between centred Gaussians, in float64.

    W2²(N(m₁,S₁), N(m₂,S₂)) = |m₁ − m₂|² + B²(S₁, S₂),
    B²(S₁, S₂) = tr S₁ + tr S₂ − 2 tr (S₁^{½} S₂ S₁^{½})^{½}.

Every function returns the *squared* distance (POT's `bures_wasserstein_distance` returns W2).
"""
from __future__ import annotations

import torch


def _sym(S: torch.Tensor) -> torch.Tensor:
    return 0.5 * (S + S.transpose(-1, -2))


def psd_sqrt(S: torch.Tensor) -> torch.Tensor:
    """S^{½} of a symmetric PSD matrix by eigh, eigenvalues clamped at 0. (..., d, d)."""
    w, V = torch.linalg.eigh(_sym(S))
    return (V * w.clamp_min(0).sqrt().unsqueeze(-2)) @ V.transpose(-1, -2)


def bures_wasserstein2(S1: torch.Tensor, S2: torch.Tensor) -> torch.Tensor:
    """Squared Bures distance B²(S₁, S₂), batched over leading dims: (..., d, d) → (...).

    Both inputs are symmetrised and cast to float64; eigenvalues are clamped at 0, so the result
    is finite and ≥ 0 for any PSD input, rank-deficient ones included. The cross term is
    tr (S₁^{½} S₂ S₁^{½})^{½} = Σ √eig(S₁^{½} S₂ S₁^{½}) (a symmetric matrix, so eigvalsh is exact).
    """
    S1, S2 = _sym(S1.to(torch.float64)), _sym(S2.to(torch.float64))
    R = psd_sqrt(S1)
    cross = torch.linalg.eigvalsh(_sym(R @ S2 @ R)).clamp_min(0).sqrt().sum(-1)
    tr1 = torch.diagonal(S1, dim1=-2, dim2=-1).sum(-1)
    tr2 = torch.diagonal(S2, dim1=-2, dim2=-1).sum(-1)
    return (tr1 + tr2 - 2 * cross).clamp_min(0)


def bures_wasserstein2_commuting(l1: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """B² for covariances that commute, from their eigenvalues in the common basis:
    Σ_i (√l1_i − √l2_i)², reduced over the last dim."""
    l1, l2 = l1.to(torch.float64).clamp_min(0), l2.to(torch.float64).clamp_min(0)
    return ((l1.sqrt() - l2.sqrt()) ** 2).sum(-1)


def wasserstein2_gaussian(m1, S1, m2, S2) -> torch.Tensor:
    """W2² between N(m₁, S₁) and N(m₂, S₂): |m₁ − m₂|² + B²(S₁, S₂)."""
    return ((m1.to(torch.float64) - m2.to(torch.float64)) ** 2).sum(-1) + bures_wasserstein2(S1, S2)


def second_moment(x: torch.Tensor) -> torch.Tensor:
    """Ĉ = (1/M) Σ_m x_m x_mᵀ over dim −2, in float64: the covariance estimator with known zero
    mean. (..., M, d) → (..., d, d). Its 1/M bias on B² is the K_M term of the theory."""
    x = x.to(torch.float64)
    return x.transpose(-1, -2) @ x / x.shape[-2]
