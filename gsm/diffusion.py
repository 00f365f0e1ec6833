"""Diffusion samplers (DDPM, DDIM) with linear time-conditioned scores, and the exact law of their output.

Forward process (VP, theory note §6): x_t = √ᾱ_t x₀ + √(1−ᾱ_t) z, t = 1..T, with
β_t = linspace(beta_start, beta_end, T), α_t = 1 − β_t, ᾱ_t = Π_{s≤t} α_s, ᾱ₀ = 1.

Sampling grid (respacing). The reverse chain visits t_min = t_0 < t_1 < … < t_K = T with
t_k = t_min + ⌊k (T − t_min)/K + ½⌋ (evenly spaced, both ends included; K = `steps`, every
timestep when K = T − t_min). Step k (t_k → t_{k−1}) uses the betas the subsequence induces,
β_k = 1 − ᾱ_{t_k}/ᾱ_{t_{k−1}} (so the respaced chain is a DDPM on ᾱ_k := ᾱ_{t_k}). With t_min = 0
and K | T this is diffusers' "trailing" spacing.

Every step is linear in x for a linear score s_k(x) = −A_k x (A_k the score matrix at ᾱ_k):

    x_{k−1} = c_k x + g_k s_k(x) + √q_k ξ  ⇔  x_{k−1} = F_k x + √q_k ξ,  F_k = c_k I − g_k A_k,

    DDPM (Ho et al.):  c_k = 1/√α_k,  g_k = β_k/√α_k,  q_k = β_k | β̃_k = β_k(1−ᾱ_{k−1})/(1−ᾱ_k)
    DDIM (Song et al., η): σ_k² = η² β̃_k,  c_k = √(ᾱ_{k−1}/ᾱ_k),
                        g_k = c_k (1−ᾱ_k) − √((1−ᾱ_{k−1} − σ_k²)(1−ᾱ_k)),  q_k = σ_k²

and the final map (grid index 0, q₀ = 0) is of the same form: `none` (c₀ = 1, g₀ = 0), `rescale`
x/√ᾱ₀, `tweedie` E[x₀|x_{t_min}] = (x + (1−ᾱ₀) s₀(x))/√ᾱ₀. From x_T ~ N(0, v_T I) the output is
exactly N(0, C) with the chain C ← F_k C F_kᵀ + q_k I (k = K..1), C ← F₀ C F₀ᵀ, for any A_k,
non-symmetric and non-commuting included (`ddpm_covariance`).

Score matrices are indexed by the grid: A has shape (..., K+1, d, d), A[..., k] at ᾱ_k (A[..., 0] is
read only by `tweedie` with t_min > 0). The pipeline's score model has L levels: the grid indices
k = k₀..K that the chain reads (k₀ = 0 for tweedie with t_min > 0, else 1), level l ↔ k = l + k₀.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from gsm.chain import noisy_linear_step
from gsm.metrics import bures_wasserstein2
from gsm.models import dsm_optimum
from gsm.theory import (SGD_INIT, _check, _check_spectrum, bures_second_order_weights, kernel_m, kernel_n,
                        sgd_variance)

VARIANCES = ("beta", "beta_tilde")
FINALS = ("none", "rescale", "tweedie")


# ---------------------------------------------------------------------------------------- schedules

def linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.02,
                         scaled: bool = False) -> torch.Tensor:
    """β_t = linspace(beta_start, beta_end, T), t = 1..T, float64 (T,). `scaled` multiplies both ends
    by 1000/T (improved DDPM), which keeps ᾱ_T ≈ 4e-5 for any T and needs T > 20 (β_T < 1)."""
    if int(T) != T or T < 1:
        raise ValueError(f"sampler.T must be an integer >= 1, got {T}")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
    if scaled:
        if T <= 20:
            raise ValueError(f"sampler.T must be > 20 with scaled betas (β_T = 20/T < 1), got {T}")
        beta_start, beta_end = beta_start * 1000 / T, beta_end * 1000 / T
    return torch.linspace(beta_start, beta_end, int(T), dtype=torch.float64)


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = Π_{s≤t}(1 − β_s) for t = 0..T, with ᾱ₀ = 1: (T,) → (T+1,) float64."""
    betas = betas.to(torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def timestep_grid(T: int, steps: int | None = None, t_min: int = 0) -> torch.Tensor:
    """The timesteps t_0 = t_min < … < t_K = T visited by the reverse chain, (K+1,) long.

    t_k = t_min + ⌊k (T − t_min)/K + ½⌋, K = steps (None: every timestep, K = T − t_min).
    """
    if int(t_min) != t_min or not 0 <= t_min < T:
        raise ValueError(f"sampler.t_min must be an integer in [0, T-1] = [0, {T - 1}], got {t_min}")
    span = int(T) - int(t_min)
    K = span if steps is None else steps
    if int(K) != K or not 1 <= K <= span:
        raise ValueError(f"sampler.steps must be an integer in [1, T - t_min] = [1, {span}], got {steps}")
    k = torch.arange(int(K) + 1, dtype=torch.float64)
    return int(t_min) + torch.floor(k * span / K + 0.5).long()


# ------------------------------------------------------------------------------------ linear chains

@dataclass
class ReverseChain:
    """A reverse chain on the grid ᾱ_0..ᾱ_K: step k (K..1) is x ← c_k x + g_k s_k(x) + √q_k ξ and the
    final map is index 0 (q₀ = 0). All fields (K+1,) float64; `levels` are the grid indices whose
    score the chain reads."""

    alpha_bar: torch.Tensor
    c: torch.Tensor
    g: torch.Tensor
    q: torch.Tensor
    levels: torch.Tensor = field(default=None)

    @property
    def K(self) -> int:
        return self.alpha_bar.numel() - 1


def _check_alpha_bar(ab: torch.Tensor) -> torch.Tensor:
    ab = torch.as_tensor(ab, dtype=torch.float64)
    if ab.ndim != 1 or ab.numel() < 2 or not (ab > 0).all() or not (ab <= 1).all() or not (ab[1:] < ab[:-1]).all():
        raise ValueError("alpha_bar must be a strictly decreasing sequence in (0, 1] of length >= 2")
    return ab


def _final_map(ab0: float, final: str):
    if final not in FINALS:
        raise ValueError(f"sampler.final must be one of {' | '.join(FINALS)}, got {final}")
    if final == "none":
        return 1.0, 0.0
    if final == "rescale":
        return 1 / math.sqrt(ab0), 0.0
    return 1 / math.sqrt(ab0), (1 - ab0) / math.sqrt(ab0)      # Tweedie: (x + (1−ᾱ)s(x))/√ᾱ


def _chain(ab, c, g, q, final):
    c0, g0 = _final_map(float(ab[0]), final)
    c = torch.cat([torch.tensor([c0], dtype=torch.float64), c])
    g = torch.cat([torch.tensor([g0], dtype=torch.float64), g])
    q = torch.cat([torch.zeros(1, dtype=torch.float64), q])
    levels = torch.arange(0 if g0 != 0 else 1, ab.numel())
    return ReverseChain(ab, c, g, q, levels)


def ddpm_chain(alpha_bar: torch.Tensor, variance: str = "beta", final: str = "none",
               noise_last: bool = False) -> ReverseChain:
    """Ho et al.'s ancestral sampler on the grid ᾱ (K+1,): x_{k−1} = (x + β_k s_k(x))/√α_k + η_k ξ,
    η_k² = β_k (`beta`) or β̃_k = β_k(1−ᾱ_{k−1})/(1−ᾱ_k) (`beta_tilde`). As in Ho et al., the step
    that lands on t = 0 adds no noise unless `noise_last` (β̃ is 0 there anyway)."""
    if variance not in VARIANCES:
        raise ValueError(f"sampler.variance must be one of {' | '.join(VARIANCES)}, got {variance}")
    ab = _check_alpha_bar(alpha_bar)
    alpha = ab[1:] / ab[:-1]
    beta = 1 - alpha
    q = beta.clone() if variance == "beta" else beta * (1 - ab[:-1]) / (1 - ab[1:])
    if ab[0] == 1 and not noise_last:
        q[0] = 0.0
    return _chain(ab, 1 / alpha.sqrt(), beta / alpha.sqrt(), q, final)


def ddim_chain(alpha_bar: torch.Tensor, eta: float = 0.0, final: str = "none") -> ReverseChain:
    """DDIM (Song et al., eq. 12) with ε̂ = −√(1−ᾱ_k) s_k(x):
    x_{k−1} = √ᾱ_{k−1} x̂₀ + √(1−ᾱ_{k−1}−σ_k²) ε̂ + σ_k ξ, x̂₀ = (x − √(1−ᾱ_k) ε̂)/√ᾱ_k, σ_k = η√β̃_k.
    η = 0 is deterministic; η = 1 is DDPM with β̃."""
    if not 0 <= eta <= 1:
        raise ValueError(f"sampler.eta must be in [0, 1], got {eta}")
    ab = _check_alpha_bar(alpha_bar)
    prev, cur = ab[:-1], ab[1:]
    sig2 = eta ** 2 * (1 - cur / prev) * (1 - prev) / (1 - cur)
    c = (prev / cur).sqrt()
    g = c * (1 - cur) - ((1 - prev - sig2).clamp_min(0) * (1 - cur)).sqrt()
    return _chain(ab, c, g, sig2, final)


def exact_score_matrices(cov: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The exact scores on the grid, A_k = S_k⁻¹, S_k = ᾱ_k Σ + (1−ᾱ_k) I: (..., d, d) → (..., K+1, d, d)."""
    ab = alpha_bar.to(torch.float64)
    return dsm_optimum(cov, ab.sqrt(), (1 - ab).sqrt())


def exact_score_eigenvalues(lam: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Per-eigenvalue exact score a_k(λ) = 1/(ᾱ_k λ + 1 − ᾱ_k): (d,), (K+1,) → (K+1, d)."""
    ab = alpha_bar.to(torch.float64).unsqueeze(-1)
    return 1 / (ab * lam.to(torch.float64) + 1 - ab)


# ---------------------------------------------------------------------------------------- samplers

def reverse_sample(score_fn, x: torch.Tensor, chain: ReverseChain,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Runs the chain from x = x_T (..., M, d): x ← c_k x + g_k s(x, k) + √q_k ξ for k = K..1, then the
    final map. score_fn(y, k) takes the grid index k. Samples are never clipped."""
    for k in range(chain.K, -1, -1):
        c, g, q = float(chain.c[k]), float(chain.g[k]), float(chain.q[k])
        x = c * x + g * score_fn(x, k) if g != 0 else c * x
        if q > 0:
            x = x + math.sqrt(q) * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x


def ddpm_sample(score_fn, x_T: torch.Tensor, alpha_bar: torch.Tensor, variance: str = "beta",
                final: str = "none", noise_last: bool = False, generator=None) -> torch.Tensor:
    """DDPM ancestral sampling from x_T (..., M, d) on the grid ᾱ (K+1,) (see `ddpm_chain`)."""
    return reverse_sample(score_fn, x_T, ddpm_chain(alpha_bar, variance, final, noise_last), generator)


def ddim_sample(score_fn, x_T: torch.Tensor, alpha_bar: torch.Tensor, eta: float = 0.0,
                final: str = "none", generator=None) -> torch.Tensor:
    """DDIM sampling from x_T (..., M, d) on the grid ᾱ (K+1,) (see `ddim_chain`)."""
    return reverse_sample(score_fn, x_T, ddim_chain(alpha_bar, eta, final), generator)


def linear_reverse_sample(A: torch.Tensor, x: torch.Tensor, chain: ReverseChain,
                          generator=None) -> torch.Tensor:
    """`reverse_sample` for linear scores, one fused step x ← x F_kᵀ + √q_k ξ. A: (R, K+1, d, d)
    (grid-indexed), x: (R, M, d)."""
    A = A.to(x.dtype)
    eye = torch.eye(A.shape[-1], dtype=x.dtype, device=x.device)
    for k in range(chain.K, -1, -1):
        Ft = (float(chain.c[k]) * eye - float(chain.g[k]) * A[:, k]).transpose(-1, -2)
        x = noisy_linear_step(x, Ft, float(chain.q[k]), generator)
    return x


# ------------------------------------------------------------------------------------ exact laws

def ddpm_covariance(A: torch.Tensor, chain: ReverseChain, init_cov=1.0, trajectory: bool = False) -> torch.Tensor:
    """Exact covariance of the output of any linear reverse chain (DDPM or DDIM) with scores
    s_k(x) = −A_k x, for any A_k (non-symmetric, non-commuting):

        C_K = init_cov,  C_{k−1} = F_k C_k F_kᵀ + q_k I (k = K..1),  C_out = F₀ C₀ F₀ᵀ,  F_k = c_k I − g_k A_k.

    A: (..., K+1, d, d) grid-indexed, float64. init_cov: a number v_T (C_K = v_T I) or (..., d, d).
    Returns C_out (..., d, d), or with `trajectory` (C_0..C_K, C_out) as ((..., K+1, d, d), (..., d, d)),
    C_k being the law of x at t_k (before the final map).
    """
    A = A.to(torch.float64)
    d = A.shape[-1]
    eye = torch.eye(d, dtype=torch.float64, device=A.device)
    batch = A.shape[:-3]
    C = (init_cov * eye).expand(*batch, d, d) if not torch.is_tensor(init_cov) else \
        init_cov.to(torch.float64).expand(*batch, d, d)
    traj = [None] * (chain.K + 1)
    for k in range(chain.K, -1, -1):
        if trajectory:
            traj[k] = C
        F = chain.c[k].item() * eye - chain.g[k].item() * A[..., k, :, :]
        C = torch.matmul(F @ C, F.transpose(-1, -2)) + chain.q[k].item() * eye
    return (torch.stack(traj, -3), C) if trajectory else C


def ddpm_variance(a: torch.Tensor, chain: ReverseChain, init_var=1.0) -> torch.Tensor:
    """(init_var: v_T, a number or (..., d).) The same law when every A_k = U diag(a_k) Uᵀ shares the eigenbasis of Σ (e.g. the exact score,
    a_k = 1/(ᾱ_k λ + 1 − ᾱ_k)): v ← (c_k − g_k a_k)² v + q_k per eigenvalue. a: (..., K+1, d) → (..., d).
    For DDPM with the exact score, c_k − g_k a_k = √α_k s_{k−1}/s_k (theory note §6)."""
    a = a.to(torch.float64)
    v = torch.as_tensor(init_var, dtype=torch.float64).expand_as(a[..., 0, :])
    for k in range(chain.K, -1, -1):
        v = (chain.c[k] - chain.g[k] * a[..., k, :]) ** 2 * v + chain.q[k]
    return v


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


def _ddpm_map_on_matrix(J: torch.Tensor, chain: ReverseChain, init_var: float,
                        budget: SGDBudget | None = None) -> torch.Tensor:
    """h(J) for the map h: λ ↦ output variance with the plug-in score a_k = 1/(ᾱ_k λ + 1 − ᾱ_k) (or, with a
    finite SGD `budget`, its mean `sgd_mean_score`), evaluated on square matrices J (..., n, n) with the
    matrix operations only (all factors commute)."""
    eye = torch.eye(J.shape[-1], dtype=torch.float64)
    C = init_var * eye.expand_as(J)
    L = chain.levels.numel()
    for k in range(chain.K, -1, -1):
        F = chain.c[k].item() * eye
        if chain.g[k] != 0:
            F = F - chain.g[k].item() * sgd_mean_score(J, chain.alpha_bar[k].item(), L, budget)
        C = F @ C @ F + chain.q[k].item() * eye
    return C


def ddpm_divided_differences(lam: torch.Tensor, chain: ReverseChain, init_var: float = 1.0,
                             budget: SGDBudget | None = None):
    """h(λ_i), h^[1](λ_i, λ_j) and h^[2](λ_i, λ_j, λ_i) of the DDPM map h (output variance with the
    plug-in score, or the mean score after a finite SGD `budget`, as a function of the eigenvalue), by
    Opitz' formula: h of the upper-bidiagonal J = [[λ_i, 1, 0], [0, λ_j, 1], [0, 0, λ_i]] holds h^[1] at
    (0, 1) and h^[2] at (0, 2); exact for repeated eigenvalues too. lam (d,) → (d,), (d, d), (d, d)."""
    lam = lam.to(torch.float64)
    d = lam.numel()
    J = torch.zeros(d, d, 3, 3, dtype=torch.float64)
    J[..., 0, 0] = lam.view(d, 1)
    J[..., 1, 1] = lam.view(1, d)
    J[..., 2, 2] = lam.view(d, 1)
    J[..., 0, 1] = J[..., 1, 2] = 1.0
    H = _ddpm_map_on_matrix(J, chain, init_var, budget)
    return H[..., 0, 0].diagonal(), H[..., 0, 1], H[..., 0, 2]


# ----------------------------------------------------------------------------------------- theory

def level_sgd_variance(lam: torch.Tensor, alpha_bar: torch.Tensor, batch_size: int = 1,
                       symmetric: bool = False) -> torch.Tensor:
    """Per unit τ, the stationary variance of the SGD error Δ_k = A_k − A_k* at each grid level, first
    order in τ, in the eigenbasis: (d,), (K+1,) → V (K+1, d, d), V[k, r, i] = Var(Δ_k,ri)/τ.

    A sample at level k is y = √ᾱ_k x + s_k z with loss ½‖z − s_k A_k y‖²: convention (L) with σ = s_k
    on data √ᾱ_k x ~ N(0, ᾱ_kΣ). So §2.2 holds with Σ → ᾱ_kΣ, σ → s_k: U = s²ᾱΣM⁻¹, M = ᾱΣ + s²I,
    Var(Δ_ri) = τ U_r/(2b s²) = τ ᾱλ_r/(2b(ᾱλ_r + s²)) (`gsm.theory.sgd_variance` at λ → ᾱλ, σ → s),
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
    (population data, first order in τ as in `gsm.theory.sgd_transient_variance`, with the level draws):

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


def ddpm_tau_kernel(lam: torch.Tensor, chain: ReverseChain, batch_size: int = 1, init_var: float = 1.0,
                    symmetric: bool = False, transient=None) -> torch.Tensor:
    """K_τ(λ_i, λ_j) of the diffusion chain: E[B²(Σ, C(A* + Δ))] − B²(Σ, C(A*)) ≈ τ Σ_ij K_τ, with Δ_k the
    stationary SGD fluctuations of `level_sgd_variance` at each level read by the chain (A* the exact score).

    A perturbation Δ at level k changes F_k by −g_kΔ, so in the eigenbasis (ℓ = the product of the
    later maps F₀⋯F_{k−1}, f = F_k, c = the variance C_k at t_k, all diagonal at A*):

        C¹_ij = −g ℓ_iℓ_j (Δ_ij c_j f_j + Δ_ji c_i f_i),   C²_ij = g² ℓ_iℓ_j Σ_m Δ_im c_m Δ_jm,

    and E[B²] − B⁰ = Σ_i ρ_i E[C²_ii] + ½ Σ_ij W_ij E[(C¹_ij)²] (§4, base = the output variance h).
    With V = Var(Δ)/τ (row-wise, uncorrelated entries), per level

        K_ij = g² ℓ_i² [ ½(1+δ_ij) W_ij ℓ_j² (V_ij c_j² f_j² + V_ji c_i² f_i²) + ρ_i V_ij c_j ],

    (symmetric Δ: ½ W_ij ℓ_j² V_ij (c_i f_i + c_j f_j)² in the first part), summed over the levels.
    Returns (d, d) per unit τ.

    transient = (a, var, cross) of `level_sgd_transient` (finite SGD budget): the chain is expanded
    around the mean scores a instead of A*, with Var(Δ) = var and X = Cov(Δ_ij, Δ_ji) = cross, so the
    first part is ½ W_ij ℓ_j² (V_ij c_j²f_j² + V_ji c_i²f_i² + 2X_ij c_if_ic_jf_j) (X_ii = V_ii).
    Returns the τ term itself (d, d) then, not per unit τ."""
    lam = lam.to(torch.float64)
    a = exact_score_eigenvalues(lam, chain.alpha_bar) if transient is None else transient[0]   # (K+1, d)
    f = chain.c.view(-1, 1) - chain.g.view(-1, 1) * a          # F_k eigenvalues
    # variance at each grid level (before step k) and the propagator ℓ_k = f_0 ⋯ f_{k−1}
    K = chain.K
    c = torch.empty(K + 1, lam.numel(), dtype=torch.float64)
    v = torch.full_like(lam, float(init_var))
    for k in range(K, -1, -1):
        c[k] = v
        v = f[k] ** 2 * v + chain.q[k]
    h = v
    ell = torch.cumprod(torch.cat([torch.ones(1, lam.numel(), dtype=torch.float64), f[:-1]]), 0)
    rho, W = bures_second_order_weights(lam, h)
    V = level_sgd_variance(lam, chain.alpha_bar, batch_size, symmetric) if transient is None else transient[1]
    eye = torch.eye(lam.numel(), dtype=torch.float64)
    out = torch.zeros(lam.numel(), lam.numel(), dtype=torch.float64)
    for k in chain.levels.tolist():
        cf = c[k] * f[k]
        li, lj = ell[k].view(-1, 1), ell[k].view(1, -1)
        if transient is not None:
            first = 0.5 * W * lj ** 2 * (V[k] * cf.view(1, -1) ** 2 + V[k].T * cf.view(-1, 1) ** 2
                                         + 2 * transient[2][k] * cf.view(-1, 1) * cf.view(1, -1))
        elif symmetric:
            first = 0.5 * W * lj ** 2 * V[k] * (cf.view(-1, 1) + cf.view(1, -1)) ** 2
        else:
            first = 0.5 * (1 + eye) * W * lj ** 2 * (V[k] * cf.view(1, -1) ** 2 + V[k].T * cf.view(-1, 1) ** 2)
        second = rho.view(-1, 1) * V[k] * c[k].view(1, -1)
        out += chain.g[k] ** 2 * li ** 2 * (first + second)
    return out


def _final_of_marginal(lam, ab0, final):
    """Variance of the final map applied to the exact marginal S = ᾱλ + 1 − ᾱ at t_min (exact score)."""
    S = ab0 * lam + 1 - ab0
    return {"none": S, "rescale": S / ab0, "tweedie": ab0 * lam ** 2 / S}[final]


def diffusion_prediction(lam, chain: ReverseChain, *, n=None, tau=0.0, batch_size=1, particles=None,
                         init_var=1.0, symmetric=False, final="none", sgd_steps=None, init="zeros") -> dict:
    """E[W2²(N(0, Σ), law of the DDPM/DDIM output)] ≈ bias + (1/N) Σ K_N + τ Σ K_τ [+ (1/M) Σ K_M].

    * bias = Σ(√λ − √h(λ))², h the exact-score output variance (`ddpm_variance`), exact, split as
      t_min (the exact reverse process stopped at t_min, then the final map: Σ(√λ − √f(S_{t_min}))²),
      initialization (x_T ~ N(0, v_T I) instead of N(0, S_T)) and discretization (the rest);
    * generalization: K_N = (1+δ_ij)λ_iλ_j[½ W_ij h^[1](λ_i,λ_j)² + ρ_i h^[2](λ_i,λ_j,λ_i)] (note §5.2 with h
      the DDPM map: the plug-in scores (ᾱ_kΣ̂ + (1−ᾱ_k)I)⁻¹ make the output h(Σ̂)); first order in 1/N;
    * optimization: `ddpm_tau_kernel` (stationary SGD at every level; first order in τ, no τ/N term);
    * particles: K_M = ½(1+δ_ij) W_ij h_i h_j (M independent particles, (1/M)Σ x xᵀ).

    sgd_steps = S (with tau > 0): SGD ran S steps from A₀ = a₀I (`init`), not to stationarity. As for
    Langevin, the exact mean offset of E[A_k] (`sgd_mean_score`, a function of Σ̂, so also inside the 1/N
    term) gives sgd_mean_offset, part of optimization, and the τ term uses the transient covariance of
    `level_sgd_transient` around the mean scores.
    The dict has the keys of `gsm.theory.langevin_prediction` (floats, kernels (d, d), diagnostics).
    """
    lam = _check_spectrum(lam)
    d = lam.numel()
    n = _check("n", n, low=1, integer=True, allow_none=True)
    tau = _check("tau", tau, low=0)
    b = _check("batch_size", batch_size, low=1, integer=True)
    M = _check("particles", particles, low=1, integer=True, allow_none=True)
    sgd_steps = _check("sgd_steps", sgd_steps, low=0, integer=True, allow_none=True)
    if init not in SGD_INIT:
        raise ValueError(f"init must be one of {' | '.join(SGD_INIT)}, got {init}")
    budget = SGDBudget(sgd_steps, tau, b, init) if sgd_steps is not None and tau > 0 else None
    if budget is not None and symmetric:
        raise ValueError("sgd_steps is supported with symmetric=False only")
    ab = chain.alpha_bar
    h, H1, H2 = ddpm_divided_differences(lam, chain, init_var, budget)
    rho, W = bures_second_order_weights(lam, h)
    bias_per = (lam.sqrt() - h.sqrt()) ** 2
    a = exact_score_eigenvalues(lam, ab)
    bias_opt = float(((lam.sqrt() - ddpm_variance(a, chain, init_var).sqrt()) ** 2).sum())
    h_exact_init = ddpm_variance(a, chain, ab[-1] * lam + 1 - ab[-1])
    t_min_term = float(((lam.sqrt() - _final_of_marginal(lam, float(ab[0]), final).sqrt()) ** 2).sum())
    exact_init = float(((lam.sqrt() - h_exact_init.sqrt()) ** 2).sum())
    out = {"t_min": t_min_term, "discretization": exact_init - t_min_term,
           "initialization": bias_opt - exact_init}
    K_N = kernel_n(lam, H1, H2, rho, W)
    out["generalization"] = float(K_N.sum()) / n if n is not None else 0.0
    out["sgd_mean_offset"] = float(bias_per.sum()) - bias_opt if budget is not None else 0.0
    if budget is not None:
        cells = ddpm_tau_kernel(lam, chain, b, init_var, symmetric,
                                transient=level_sgd_transient(lam, ab, chain.levels.numel(), budget))
        K_tau = cells / tau
    else:
        K_tau = ddpm_tau_kernel(lam, chain, b, init_var, symmetric) if tau > 0 else torch.zeros(d, d, dtype=torch.float64)
    out["optimization"] = out["sgd_mean_offset"] + tau * float(K_tau.sum())
    K_M = kernel_m(h, W)
    out["particles"] = float(K_M.sum()) / M if M is not None else 0.0
    out["total"] = bias_opt + out["generalization"] + out["optimization"] + out["particles"]
    lv = ab[chain.levels].view(-1, 1)
    m = lv * lam + 1 - lv
    eps_tau = tau * float((lv * lam * m).max()) / (2 * b)
    warnings = []
    if n is not None and n < 5 * d:
        warnings.append(f"N = {n} < 5d = {5 * d}: the 1/N term may be off by more than ~5% (note §5.5)")
    if tau > 0 and eps_tau > 0.005:
        warnings.append(f"eps_tau = {eps_tau:.3g} > 0.005: the first-order τ term may be off by more than ~5%")
    if tau > 0 and float((tau * (1 - lv) * (1 + 1 / b) * m).max()) >= 2:
        warnings.append(f"tau = {tau}: SGD is not mean-square stable at some level (τs²(1+1/b)m_max ≥ 2)")
    out.update(kernel_n=K_N, kernel_tau=K_tau, kernel_m=K_M, bias_per_eigenvalue=bias_per, sampler_variance=h,
               eigenvalues=lam, eps_tau=eps_tau, d_over_n=d / n if n is not None else 0.0, warnings=warnings)
    return out


# ----------------------------------------------------------------------------- pipeline samplers

@dataclass
class _Diffusion:
    """Shared part of the DDPM/DDIM samplers (the sampler interface of gsm.experiment)."""

    T: int = 1000
    steps: int | None = None
    t_min: int = 0
    beta_start: float = 1e-4
    beta_end: float = 0.02
    scaled: bool = False
    final: str = "none"
    particles: int = 2000
    init_var: float = 1.0

    def __post_init__(self):
        if int(self.particles) != self.particles or self.particles < 2:
            raise ValueError(f"sampler.particles must be an integer >= 2, got {self.particles}")
        if not self.init_var >= 0:
            raise ValueError(f"sampler.init_var must be >= 0, got {self.init_var}")
        betas = linear_beta_schedule(self.T, self.beta_start, self.beta_end, self.scaled)
        self.timesteps = timestep_grid(self.T, self.steps, self.t_min)
        self.chain = self._chain(alphas_cumprod(betas)[self.timesteps])

    def _chain(self, ab):
        raise NotImplementedError

    def noise_levels(self, sigma=None):
        """The levels the chain reads: α = √ᾱ_{t_k}, s = √(1−ᾱ_{t_k}) for k in `chain.levels` (every
        sampling timestep; t_min too for tweedie with t_min > 0). σ (train.sigma) is not used."""
        ab = self.chain.alpha_bar[self.chain.levels]
        return ab.sqrt(), (1 - ab).sqrt()

    def grid_matrices(self, A: torch.Tensor) -> torch.Tensor:
        """Level-indexed A (R, L, d, d) → grid-indexed (R, K+1, d, d) (zeros where the chain reads none)."""
        A = A.to(torch.float64)
        out = A.new_zeros(A.shape[0], self.chain.K + 1, *A.shape[-2:])
        out[:, self.chain.levels] = A
        return out

    def sample(self, model, replicates: int, dim: int, generator=None, device="cpu", progress=False,
               dtype=torch.float64):
        """M particles per replicate from x_T ~ N(0, init_var·I), the chain run in `dtype`: (R, M, d)."""
        x = math.sqrt(self.init_var) * torch.randn(replicates, self.particles, dim, generator=generator,
                                                   device=device, dtype=dtype)
        if hasattr(model, "matrices"):
            return linear_reverse_sample(self.grid_matrices(model.matrices()), x, self.chain, generator)
        k0 = int(self.chain.levels[0])
        return reverse_sample(lambda y, k: model(y, k - k0), x, self.chain, generator)

    def covariance(self, A: torch.Tensor) -> torch.Tensor:
        """Exact law of the output given A (R, L, d, d) → (R, d, d)."""
        return ddpm_covariance(self.grid_matrices(A), self.chain, self.init_var)

    def unstable(self, A: torch.Tensor) -> torch.Tensor:
        """A finite chain has a finite law for any finite A: only non-finite A is flagged. (R,) bool."""
        return ~torch.isfinite(A).flatten(1).all(1)

    def prediction(self, eigenvalues, *, n, sigma=None, tau=0.0, batch_size=1, particles=None,
                   symmetric=False, sgd_steps=None, init="zeros") -> dict:
        """`diffusion_prediction` for this chain (σ is not used)."""
        return diffusion_prediction(eigenvalues, self.chain, n=n, tau=tau, batch_size=batch_size,
                                    particles=particles, init_var=self.init_var, symmetric=symmetric,
                                    final=self.final, sgd_steps=sgd_steps, init=init)

    def log_extra(self, writer, A, cov, step, max_points: int = 50, max_replicates: int = 16) -> None:
        """The exact W2²(law of x_{t_k}, true marginal ᾱΣ + (1−ᾱ)I) along the reverse trajectory, for the
        learned score (mean over ≤ 16 replicates) and the oracle score, at ≤ 50 timesteps (x axis: t)."""
        cov = cov.to(torch.float64)
        ab = self.chain.alpha_bar
        eye = torch.eye(cov.shape[-1], dtype=torch.float64, device=cov.device)
        marg = ab.view(-1, 1, 1) * cov + (1 - ab.view(-1, 1, 1)) * eye      # (K+1, d, d)
        pts = torch.unique(torch.linspace(0, self.chain.K, min(max_points, self.chain.K + 1)).round().long())
        Ag = self.grid_matrices(A[:max_replicates])
        Ao = exact_score_matrices(cov, ab).unsqueeze(0)
        for name, AA in (("learned", Ag), ("oracle", Ao)):
            traj, _ = ddpm_covariance(AA, self.chain, self.init_var, trajectory=True)
            w2 = bures_wasserstein2(marg[pts], traj[:, pts]).mean(0)
            for p, w in zip(pts.tolist(), w2.tolist()):
                # plain scalars: TensorBoard's default (fast) loader skips double-precision tensors
                writer.add_scalar(f"diffusion/w2_trajectory_{name}", w, int(self.timesteps[p]))


@dataclass
class DDPM(_Diffusion):
    """DDPM ancestral sampler (Ho et al.) with posterior variance β or β̃ (see `ddpm_chain`)."""

    variance: str = "beta"
    noise_last: bool = False

    def _chain(self, ab):
        return ddpm_chain(ab, self.variance, self.final, self.noise_last)


@dataclass
class DDIM(_Diffusion):
    """DDIM sampler (Song et al.) with stochasticity η (0: deterministic; see `ddim_chain`)."""

    eta: float = 0.0

    def _chain(self, ab):
        return ddim_chain(ab, self.eta, self.final)
