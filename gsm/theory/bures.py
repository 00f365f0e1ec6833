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


def bures_second_order_weights(eigenvalues: torch.Tensor, h: torch.Tensor):
    """Weights of the 2nd-order expansion of B² at a base diag(h) commuting with Σ = diag(λ) (note §4):

        B²(Λ, diag h + E) = Σ(√λ_i − √h_i)² + Σ_i ρ_i E_ii + ½ Σ_ij W_ij E_ij² + O(E³),
        ρ_i = 1 − √(λ_i/h_i),  W_ij = √(λ_iλ_j/(h_ih_j)) / (√(λ_ih_i) + √(λ_jh_j)).

    Returns ρ (d,) and W (d, d); W_ij = 0 where λ_i = λ_j = 0 (Σ^½ kills that block at second order)."""
    r = (eigenvalues / h).sqrt()
    s = (eigenvalues * h).sqrt()
    return 1.0 - r, torch.nan_to_num((r[:, None] * r[None, :]) / (s[:, None] + s[None, :]), nan=0.0)


def kernel_n(eigenvalues, h1, h2, rho, W):
    """1/N kernel (note §5.2) for a sampler map C = h(Σ̂), Σ̂ Wishart around Σ = diag(λ):
    K_N(λ_i, λ_j) = (1+δ_ij) λ_iλ_j [½ W_ij h^{[1]}(λ_i,λ_j)² + ρ_i h^{[2]}(λ_i,λ_j,λ_i)]. (d, d)."""
    d = eigenvalues.numel()
    ll = (1.0 + torch.eye(d, dtype=torch.float64)) * eigenvalues[:, None] * eigenvalues[None, :]
    return ll * (0.5 * W * h1 ** 2 + rho[:, None] * h2)


def kernel_m(c, W):
    """1/M particle kernel (note §5.4), Ĉ = (1/M)Σ x xᵀ: K_M(λ_i, λ_j) = ½(1+δ_ij) W_ij c_i c_j. (d, d)."""
    d = c.numel()
    return 0.5 * (1.0 + torch.eye(d, dtype=torch.float64)) * W * c[:, None] * c[None, :]


def wasserstein2_gaussian(m1, S1, m2, S2) -> torch.Tensor:
    """W2² between N(m₁, S₁) and N(m₂, S₂): |m₁ − m₂|² + B²(S₁, S₂)."""
    return ((m1.to(torch.float64) - m2.to(torch.float64)) ** 2).sum(-1) + bures_wasserstein2(S1, S2)


def second_moment(x: torch.Tensor) -> torch.Tensor:
    """Ĉ = (1/M) Σ_m x_m x_mᵀ over dim −2, in float64: the covariance estimator with known zero
    mean. (..., M, d) → (..., d, d). Its 1/M bias on B² is the K_M term of the theory."""
    x = x.to(torch.float64)
    return x.transpose(-1, -2) @ x / x.shape[-2]


# ------------------------------------------------------------------ evaluation of a non-Gaussian law

def gaussian_fit(x: torch.Tensor):
    """Mean and centred covariance (1/M, ddof 0) of particles x (..., M, d), in float64:
    m̂ (..., d), Ĉ (..., d, d)."""
    x = x.to(torch.float64)
    m = x.mean(-2)
    xc = x - m.unsqueeze(-2)
    return m, xc.transpose(-1, -2) @ xc / x.shape[-2]


ESCAPE_TAIL = 1e-9     # N(0, Σ) puts this much mass beyond the escape radius: R·M·1e-9 ≪ 1 false flags per run


def escaped_fraction(cov: torch.Tensor, x: torch.Tensor, tail: float = ESCAPE_TAIL) -> torch.Tensor:
    """Fraction of the particles x beyond the `tail` quantile of N(0, Σ), i.e. with P(χ²_d > xᵀΣ⁻¹x) < tail.

    A sampler of the target puts a fraction `tail` there. A learned score that does not pull the chain back
    far from the data lets particles escape along some direction; a few percent of them then dominate the
    Gaussian-fit W2² of that replicate (its covariance), which the mean over replicates inherits.
    cov (d, d), x (R, M, d), finite → (R,), float64."""
    S, x = cov.to(torch.float64), x.to(torch.float64)
    w = torch.linalg.solve_triangular(torch.linalg.cholesky(S), x.transpose(-1, -2), upper=False)
    q = (w ** 2).sum(-2)                                                  # xᵀΣ⁻¹x, (R, M)
    p = torch.special.gammaincc(torch.full_like(q, 0.5 * S.shape[-1]), 0.5 * q)
    return (p < tail).to(torch.float64).mean(-1)


def gaussian_fit_w2(cov: torch.Tensor, x: torch.Tensor):
    """W2² between N(0, Σ) and the Gaussian fit N(m̂, Ĉ) of the particles, and its 1/M bias.

        w2 = |m̂|² + B²(Σ, Ĉ),   bias = (1/M) [ Σ_i √x_i + ½ Σ_ij (1+δ_ij) √(x_i x_j)/(√x_i + √x_j) ],

    x_i the eigenvalues of Σ^½ Ĉ Σ^½. The bias is E[w2] − (|m|² + B²(Σ, C)) to first order in 1/M for M
    independent Gaussian particles of law N(m, C) (theory note §5.4, for any C, commuting with Σ or not):
    the second-order Bures term under Wishart fluctuations gives the double sum (K_M, written with
    x = eig(Σ^½ C Σ^½); it equals Σ K_M when C commutes with Σ), the ddof-0 centring −tr((I−T)C) and
    the mean tr C; together Σ √x_i. It is evaluated at Ĉ (an O(1/M²) change) and is only approximate
    for a non-Gaussian law (its fourth moments differ). Gaussian fits: w2 ≤ the true W2² (Gelbrich).
    cov (d, d), x (R, M, d) → w2 (R,), bias (R,), float64.
    """
    m, C = gaussian_fit(x)
    S = cov.to(torch.float64)
    w2 = (m ** 2).sum(-1) + bures_wasserstein2(S, C)
    R = psd_sqrt(S)
    ev = torch.linalg.eigvalsh(R @ C @ R).clamp_min(0)
    r = ev.sqrt()
    d = ev.shape[-1]
    pair = (r.unsqueeze(-1) * r.unsqueeze(-2)) / (r.unsqueeze(-1) + r.unsqueeze(-2)).clamp_min(1e-300)
    k_m = 0.5 * ((1 + torch.eye(d, dtype=torch.float64, device=ev.device)) * pair).sum((-1, -2))
    return w2, (r.sum(-1) + k_m) / x.shape[-2]
