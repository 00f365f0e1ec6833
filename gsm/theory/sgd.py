"""The DSM-SGD fluctuation model (docs/theory.md §2, §11): the stationary covariance of A − A*
(`sgd_variance`, exact-in-τ `sgd_variance_exact`, mean-square stability), the mean score after S steps
from A₀ (`dsm_score_matrix`, `sgd_mean_score`, `SGDBudget`), the transient covariance
(`sgd_transient_variance`) and their per-noise-level versions for diffusion samplers
(`level_sgd_variance`, `level_sgd_transient`). Eigenbasis of Σ, float64."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_F64 = torch.float64


SGD_INIT = {"zeros": 0.0, "identity": 1.0}     # A₀ = a₀ I (model.init); "optimum": A₀ = A*


def dsm_score_matrix(X, sigma, tau=0.0, sgd_steps=None, init="zeros"):
    """Mean score matrix E[A] as a function of the empirical covariance X = Σ̂ (…, n, n).

    sgd_steps=None (or init="optimum"): the DSM optimum A* = M̂⁻¹, M̂ = X + σ²I. Otherwise SGD after
    k = sgd_steps steps from A₀ = a₀I (init "zeros": a₀ = 0, "identity": a₀ = 1), exact mean (note §2.1):
        E[A_k] = A* + (a₀I − A*)(I − τσ²M̂)^k   (= (I − (I − τσ²M̂)^k) M̂⁻¹ from A₀ = 0).
    """
    eye = torch.eye(X.shape[-1], dtype=X.dtype)
    Mh = X + sigma ** 2 * eye
    A = torch.linalg.inv(Mh)
    if sgd_steps is None or init == "optimum":
        return A
    R = torch.linalg.matrix_power(eye - tau * sigma ** 2 * Mh, int(sgd_steps))
    return A + (SGD_INIT[init] * eye - A) @ R


def sgd_variance(eigenvalues, *, sigma, tau, batch_size=1, symmetric=False):
    """First-order stationary SGD covariance of Δ = A − A* in the eigenbasis (note §2.2, §5.3).

    Non-symmetric A: entries uncorrelated, Var(Δ_ri) = τ v_r, v_r = λ_r/(2b(λ_r + σ²)) (row r).
    symmetric=True (update with (g+gᵀ)/2): Δ_ij = Δ_ji, Var = S_ij = τ(U_i m_j + U_j m_i)/(4bσ²(m_i+m_j))
    for i ≠ j and S_ii = τ v_i, with U_i = σ²λ_i/m_i.
    Returns (var, cross): var_ri = Var(Δ_ri), cross_ri = Cov(Δ_ri, Δ_ir) (its diagonal is unused).
    """
    lam = eigenvalues
    m = lam + sigma ** 2
    d = lam.numel()
    if not symmetric:
        var = (tau * lam / (2 * batch_size * m))[:, None].expand(d, d).clone()
        return var, torch.zeros(d, d, dtype=_F64)
    U = sigma ** 2 * lam / m
    S = tau * (U[:, None] * m[None, :] + U[None, :] * m[:, None]) / (
        4 * batch_size * sigma ** 2 * (m[:, None] + m[None, :]))
    S.diagonal().copy_(tau * lam / (2 * batch_size * m))   # S_ii = τU_i/(2bσ²) = τv_i
    return S, S.clone()


def sgd_mean_square_stable(eigenvalues, *, sigma, tau, batch_size=1) -> bool:
    """Whether constant-step DSM-SGD is mean-square stable on online Gaussian data (note §2.3):
    τσ²(1+1/b)m_max < 2 and σ⁴R_b = Σ_j τσ²m_j / [b(2 − τσ²(1+1/b)m_j)] < 1, m = λ + σ². λ: (d,)."""
    b = batch_size
    m = torch.as_tensor(eigenvalues, dtype=_F64) + sigma ** 2
    denom = 2 - tau * sigma ** 2 * (1 + 1 / b) * m
    return bool((denom > 0).all()) and float((tau * sigma ** 2 * m / (b * denom)).sum()) < 1


def sgd_variance_exact(eigenvalues, *, sigma, tau, batch_size=1):
    """Exact stationary SGD variance for online Gaussian data, any b (note §2.3), (d, d):

        Var(Δ_ri) = τU_r / [bσ²(2 − τσ²(1+1/b)m_i)(1 − σ⁴R_b)],  U_r = σ²λ_r/m_r,
        σ⁴R_b = Σ_j τσ²m_j / [b(2 − τσ²(1+1/b)m_j)].

    Raises ValueError outside the mean-square stability region τσ²(1+1/b)m_max < 2, σ⁴R_b < 1.
    """
    lam, b = eigenvalues, batch_size
    m = lam + sigma ** 2
    denom = 2 - tau * sigma ** 2 * (1 + 1 / b) * m
    if not sgd_mean_square_stable(lam, sigma=sigma, tau=tau, batch_size=b):
        raise ValueError(f"tau must keep SGD mean-square stable (τσ²(1+1/b)m_max < 2 and σ⁴R_b < 1), got {tau}")
    R = (tau * sigma ** 2 * m / (b * denom)).sum()
    U = sigma ** 2 * lam / m
    return tau * U[:, None] / (b * sigma ** 2 * denom[None, :] * (1 - R))


# ----------------------------------------------------------------------------------------------
# SGD transients (finite number of SGD steps from A₀ = 0 or A₀ = A*)

def sgd_transient_variance(eigenvalues, *, sigma, tau, batch_size, sgd_steps, init="zeros"):
    """Covariance of Δ_k = A_k − E[A_k] after k SGD steps, first order in τ (online data).

    From Δ_{k+1} = Δ_k(I − τσ²Ŷ_k) − τΞ_k (note §2.1) with mean offset μ_k = μ₀(I − τσ²M)^k,
    μ₀ = A₀ − A* = diag(a₀ − 1/m) (init "zeros": a₀ = 0, "identity": a₀ = 1; 0 for "optimum"), the
    fluctuation δ_k obeys, entry (r, i) with column factor ρ_i = 1 − τσ²m_i,
        δ_{k+1,ri} ≈ ρ_i δ_{k,ri} + η_ri,  η = −τσ² μ_k(Ŷ_k − M) − τΞ_k,
        Var(η_ri) = τ²U_r m_i/b + τ²σ⁴μ_r² m_r m_i(1+δ_ri)/b,  Cov(η_ri, η_ir) = τ²σ⁴μ_rμ_i m_r m_i/b,
    (Isserlis; the mean offset's multiplicative noise correlates Δ_ri with Δ_ir). Summing the
    geometric series, with the additive part normalised to the first-order stationary τv_r:
        Var_k = τv_r(1 − ρ_i^{2k}) + τ²σ⁴μ0_r² m_r m_i(1+δ_ri)/b · Σ_{l<k} ρ_r^{2l} ρ_i^{2(k−1−l)},
        Cov_k = τ²σ⁴μ0_rμ0_i m_r m_i/b · k (ρ_rρ_i)^{k−1}.
    Returns (var, cross), (d, d) each.
    """
    lam, b, k = eigenvalues, batch_size, int(sgd_steps)
    m = lam + sigma ** 2
    rho = 1 - tau * sigma ** 2 * m
    v = lam / (2 * b * m)
    var = tau * v[:, None] * (1 - rho[None, :] ** (2 * k))
    if init == "optimum":
        return var, torch.zeros_like(var)
    mu0 = SGD_INIT[init] - 1.0 / m
    r2 = rho ** 2
    diff = r2[:, None] - r2[None, :]
    close = diff.abs() < 1e-12
    # Σ_{l<k} x^l y^{k−1−l} = (y^k − x^k)/(y − x), = k x^{k−1} when x = y
    geo = torch.where(close, k * r2[:, None] ** (k - 1),
                      (r2[None, :] ** k - r2[:, None] ** k) / torch.where(close, torch.ones_like(diff), -diff))
    s4 = tau ** 2 * sigma ** 4 / b
    var = var + s4 * (mu0 ** 2 * m)[:, None] * m[None, :] * (1 + torch.eye(lam.numel(), dtype=_F64)) * geo
    cross = s4 * (mu0 * m)[:, None] * (mu0 * m)[None, :] * k * (rho[:, None] * rho[None, :]) ** (k - 1)
    return var, cross


@dataclass(frozen=True)
class SGDBudget:
    """A finite DSM-SGD budget: `steps` SGD steps of size τ (`tau`), batch b (`batch_size`), from
    A₀ = a₀I (`init`: "zeros" a₀ = 0, "identity" a₀ = 1), each sample at a uniform level among the L the
    chain reads. None of these in a prediction: SGD at stationarity."""

    steps: int
    tau: float
    batch_size: int = 1
    init: str = "zeros"


def sgd_mean_score(X: torch.Tensor, ab: float, levels: int, budget: SGDBudget | None) -> torch.Tensor:
    """E[A_k] at level ᾱ = `ab` as a matrix function of the data second moment X (..., n, n):

        E[A_k] = A* + (a₀I − A*)(I − τs²M/L)^S,  M = ᾱX + s²I,  A* = M⁻¹,  s² = 1 − ᾱ,

    exact for SGD with replacement on data with second moment X (the gradient is affine in A and a sample
    hits the level with probability 1/L: the mean error contracts by I − τs²M/L a step). budget None: A*."""
    eye = torch.eye(X.shape[-1], dtype=torch.float64)
    M = ab * X + (1 - ab) * eye
    A = torch.linalg.inv(M)
    if budget is None:
        return A
    decay = torch.linalg.matrix_power(eye - budget.tau * (1 - ab) / levels * M, int(budget.steps))
    return A + (SGD_INIT[budget.init] * eye - A) @ decay


# ----------------------------------------------------------------------------------------- theory

def level_sgd_variance(lam: torch.Tensor, alpha_bar: torch.Tensor, batch_size: int = 1,
                       symmetric: bool = False) -> torch.Tensor:
    """Per unit τ, the stationary variance of the SGD error Δ_k = A_k − A_k* at each grid level, first
    order in τ, in the eigenbasis: (d,), (K+1,) → V (K+1, d, d), V[k, r, i] = Var(Δ_k,ri)/τ.

    A sample at level k is y = √ᾱ_k x + s_k z with loss ½‖z − s_k A_k y‖²: convention (L) with σ = s_k
    on data √ᾱ_k x ~ N(0, ᾱ_kΣ). So §2.2 holds with Σ → ᾱ_kΣ, σ → s_k: U = s²ᾱΣM⁻¹, M = ᾱΣ + s²I,
    Var(Δ_ri) = τ U_r/(2b s²) = τ ᾱλ_r/(2b(ᾱλ_r + s²)) (`gsm.theory.sgd.sgd_variance` at λ → ᾱλ, σ → s),
    entries uncorrelated. With L levels drawn uniformly, level k gets on average b/L samples a step:
    the drift τs²M/L and the noise covariance τ²UM/(Lb) are both divided by L, so the Lyapunov
    solution is unchanged and only the relaxation time L/(τ s² m_min) grows; the levels are
    independent (disjoint samples). symmetric=True: Var(Δ_ij) = Var(Δ_ji) = (U_i m_j + U_j m_i)/(4bs²(m_i+m_j)).
    """
    lam = lam.to(torch.float64)
    out = torch.zeros(alpha_bar.numel(), lam.numel(), lam.numel(), dtype=torch.float64)
    for k, ab in enumerate(alpha_bar.tolist()):
        if ab < 1:      # ᾱ = 1 (t = 0) is no noise level: never trained
            out[k] = sgd_variance(ab * lam, sigma=math.sqrt(1 - ab), tau=1.0, batch_size=batch_size,
                                  symmetric=symmetric)[0]
    return out


def level_sgd_transient(lam: torch.Tensor, alpha_bar: torch.Tensor, levels: int, budget: SGDBudget):
    """Mean and covariance of the SGD score after a finite budget, per grid level, in the eigenbasis
    (population data, first order in τ as in `gsm.theory.sgd.sgd_transient_variance`, with the level draws):

    at level k (m = ᾱλ + s², column factor ρ_i = 1 − τs²m_i/L, a₀ = SGD_INIT[init], μ0 = a₀ − 1/m),

        E[a_k] = 1/m + μ0 ρ^S                                                       (exact),
        Var(Δ_ri) = τ ᾱλ_r/(2bm_r)(1 − ρ_i^{2S})                                   (additive noise)
                  + (τ²s⁴/b) μ0_r² [m_r m_i(1+2δ_ri)/L − m_r²δ_ri/L²] Σ_{l<S} ρ_r^{2l} ρ_i^{2(S−1−l)},
        Cov(Δ_ri, Δ_ir) = (τ²s⁴/b) μ0_r μ0_i m_r m_i/L · S (ρ_rρ_i)^{S−1}   (r ≠ i; Var on the diagonal).

    The second lines are the multiplicative noise of the mean offset: a step's level-k update is
    −(τ/b) Σ_batch 1[l = k] s² μ y yᵀ, whose per-entry variance is (τ²s⁴/b)μ_r²(E[1[l=k] y_r²y_i²] − (δ_ri m_r/L)²).
    lam (d,), alpha_bar (K+1,) → a (K+1, d), var (K+1, d, d), cross (K+1, d, d); ᾱ = 1 rows are unused."""
    lam = lam.to(torch.float64)
    d, S, b, tau = lam.numel(), int(budget.steps), budget.batch_size, budget.tau
    eye = torch.eye(d, dtype=torch.float64)
    a = torch.zeros(alpha_bar.numel(), d, dtype=torch.float64)
    var, cross = torch.zeros(2, alpha_bar.numel(), d, d, dtype=torch.float64)
    for k, ab in enumerate(alpha_bar.tolist()):
        if ab >= 1:
            continue
        s2 = 1 - ab
        m = ab * lam + s2
        rho = 1 - tau * s2 * m / levels
        mu0 = SGD_INIT[budget.init] - 1 / m
        a[k] = 1 / m + mu0 * rho ** S
        r2 = rho ** 2
        diff = r2[None, :] - r2[:, None]
        close = diff.abs() < 1e-12
        # Σ_{l<S} x^l y^{S−1−l} = (y^S − x^S)/(y − x), = S x^{S−1} when x = y (x = ρ_r², y = ρ_i²)
        geo = torch.where(close, S * r2[:, None] ** (S - 1),
                          (r2[None, :] ** S - r2[:, None] ** S) / torch.where(close, torch.ones_like(diff), diff))
        mult = tau ** 2 * s2 ** 2 / b * (mu0 ** 2 * m)[:, None] * (m[None, :] * (1 + 2 * eye) / levels
                                                                     - m[:, None] * eye / levels ** 2)
        var[k] = tau * (ab * lam / (2 * b * m))[:, None] * (1 - r2[None, :] ** S) + mult * geo
        cross[k] = tau ** 2 * s2 ** 2 / (b * levels) * (mu0 * m)[:, None] * (mu0 * m)[None, :] * S \
            * (rho[:, None] * rho[None, :]) ** (S - 1)
        cross[k].diagonal().copy_(var[k].diagonal())
    return a, var, cross
