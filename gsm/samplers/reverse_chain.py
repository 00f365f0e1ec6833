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
non-symmetric and non-commuting included: `ReverseChain.linear_chain`, the step map every law and
prediction of DDPM/DDIM derives from (`gsm.theory.chain.LinearChain`, `gsm.theory.law.ChainLaw`).

Score matrices are indexed by the grid: A has shape (..., K+1, d, d), A[..., k] at ᾱ_k (A[..., 0] is
read only by `tweedie` with t_min > 0). The pipeline's score model has L levels: the grid indices
k = k₀..K that the chain reads (k₀ = 0 for tweedie with t_min > 0, else 1), level l ↔ k = l + k₀.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from gsm.theory.chain import LinearChain, affine_step
from gsm.scores.linear import dsm_optimum

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

    def linear_chain(self) -> LinearChain:
        """The step map: steps k = K..0 in application order, x ← (c_k I − g_k A_l) x + √q_k ξ with A_l the
        score of grid index k = levels[l] (a step with g_k = 0 reads no score: x ← c_k x)."""
        level_of = {int(k): l for l, k in enumerate(self.levels.tolist())}
        fns, reads = [], []
        for k in range(self.K, -1, -1):
            c, g = float(self.c[k]), float(self.g[k])
            if g != 0:
                fns.append(lambda A, alg, c=c, g=g, l=level_of[k]: affine_step(c, g, A(l), alg))
                reads.append([level_of[k]])
            else:
                fns.append(lambda A, alg, c=c: c * alg.one(A(0)))
                reads.append([])
        return LinearChain(fns, self.q.flip(0).clone(), reads, self.levels.numel())


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
