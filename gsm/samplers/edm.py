"""EDM sampler (Karras et al. 2022, Algorithms 1 and 2) with a linear score, its exact law and prediction.

VE form (theory note §10): y = x + σz; a score s(y) = −A_σ y gives the denoiser D(y; σ) = y + σ²s(y) =
(I − σ²A_σ) y and the ODE slope d = (y − D(y; σ))/σ = σA_σ y. Noise levels, i = 0..K−1,

    σ_i = (σ_max^{1/ρ} + i/(K−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ,   σ_K = 0,

start x_0 ~ N(0, σ_0² I). Step i (Algorithm 2; churn = 0 is Algorithm 1): γ_i = min(churn/K, √2 − 1) if
s_tmin ≤ σ_i ≤ s_tmax else 0, σ̂_i = σ_i(1 + γ_i), x̂ = x + s_noise √(σ̂_i² − σ_i²) ξ; Euler
x' = x̂ + h d(x̂; σ̂_i), h = σ_{i+1} − σ̂_i; Heun x ← x̂ + h(d(x̂; σ̂_i) + d(x'; σ_{i+1}))/2 unless σ_{i+1} = 0
(the Euler last step). For linear scores step i is x ← M_i x + L_i ξ_i with (`EDM.chain`, its step map)

    E = I + hσ̂_i Â,   M_i = E (last step) or I + (h/2)(σ̂_i Â + σ_{i+1} A_{i+1} E),   L_i = ℓ_i M_i,
    ℓ_i = s_noise √(σ̂_i² − σ_i²),

so the law is C ← M_i (C + ℓ_i² I) M_iᵀ from C = σ_0² I: the step map is a `gsm.theory.chain.LinearChain` with,
per step i, a noise step (M = I, q = ℓ_i²) and the Heun step (`explicit_rk_step`, stages σ̂_iÂ and
σ_{i+1}A_{i+1}, q = 0); the exact law and the prediction derive from it. The score is learned at the levels the steps
read (σ̂_i and σ_{i+1} > 0) by DSM on y = x + σz: α = 1, s = σ (`noise_levels`). NFE = 2K − 1 (no churn).
`score_levels: vp` trains instead at the equivalent VP level y/√(1+σ²): α = 1/√(1+σ²), s = σ/√(1+σ²)
(Karras' c_in preconditioning), whose score A_vp gives A = α²A_vp; the same plug-in and exact scores, but
DSM-SGD with one step τ is stable at every level (in VE form the curvature σ²(λ+σ²) spans 1e-5..4e7).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gsm.checks import choice, number
from gsm.samplers.base import Sampler
from gsm.theory.chain import LinearChain, explicit_rk_step

F64 = torch.float64


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """σ_0 > … > σ_{K−1} = σ_min of Karras et al. (eq. 5), then σ_K = 0: (K+1,) float64."""
    i = torch.arange(steps, dtype=F64)
    s = (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=F64)])


def churn_sigmas(sigmas: torch.Tensor, churn: float, s_tmin: float, s_tmax: float) -> torch.Tensor:
    """σ̂_i = σ_i(1 + γ_i), γ_i = min(churn/K, √2 − 1) if s_tmin ≤ σ_i ≤ s_tmax else 0: (K+1,) → (K,)."""
    K = sigmas.numel() - 1
    s = sigmas[:-1]
    gamma = ((s >= s_tmin) & (s <= s_tmax)).to(F64) * min(churn / K, math.sqrt(2) - 1)
    return s * (1 + gamma)


@dataclass
class EDM(Sampler):
    """Karras et al.'s Heun sampler (Algorithm 1; stochastic churn of Algorithm 2) as its step map."""

    steps: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    particles: int = 2000
    score_levels: str = "ve"

    has_diagonal_law = False        # data.kind=texture: not supported

    def __post_init__(self):
        number("sampler.steps", self.steps, 2, integer=True)
        sigma_max = number("sampler.sigma_max", self.sigma_max, 0, low_open=True)
        number("sampler.sigma_min", self.sigma_min, 0, sigma_max, low_open=True, high_open=True)
        number("sampler.rho", self.rho, 0, low_open=True)
        for key in ("churn", "s_noise", "s_tmin"):
            number(f"sampler.{key}", getattr(self, key), 0)
        s_tmax = self.s_tmax           # inf (no upper bound) allowed
        if isinstance(s_tmax, bool) or not isinstance(s_tmax, (int, float)) or not s_tmax >= self.s_tmin:
            raise ValueError(f"sampler.s_tmax must be >= s_tmin = {self.s_tmin}, got {self.s_tmax}")
        number("sampler.particles", self.particles, 2, integer=True)
        choice("sampler.score_levels", self.score_levels, ("ve", "vp"))
        self.sigmas = karras_sigmas(int(self.steps), self.sigma_min, self.sigma_max, self.rho)
        self.sigma_hat = churn_sigmas(self.sigmas, self.churn, self.s_tmin, self.s_tmax)
        reads = torch.cat([self.sigma_hat, self.sigmas[1:-1]])            # σ̂_i, then σ_{i+1} > 0
        self.levels, index = torch.unique(reads, sorted=True, return_inverse=True)
        self.levels = self.levels.flip(0)                                  # decreasing σ
        index = self.levels.numel() - 1 - index
        K = int(self.steps)
        self.hat_level, self.next_level = index[:K], torch.cat([index[K:], torch.tensor([-1])])
        self.ell = self.s_noise * (self.sigma_hat ** 2 - self.sigmas[:-1] ** 2).clamp_min(0).sqrt()
        self.J = int((self.ell > 0).sum())
        self.init_var = float(self.sigmas[0]) ** 2
        self.chain = self.linear_chain()

    def linear_chain(self) -> LinearChain:
        """The step map on the trained scores: per step i a noise step (M = I, q = ℓ_i²) and the Heun step
        (Butcher a = [[0], [1]], b = [½, ½]; Euler b = [1] at σ_{i+1} = 0) on the VE scores α_l² A_l."""
        c2 = (self.noise_levels()[0] ** 2).tolist()           # A_ve = α² A (1 for ve levels)
        fns, q, levels = [], [], []
        for i in range(int(self.steps)):
            hat, nxt = int(self.hat_level[i]), int(self.next_level[i])
            sh, sn = float(self.sigma_hat[i]), float(self.sigmas[i + 1])
            fns.append(lambda A, alg, hat=hat: alg.one(A(hat)))
            q.append(float(self.ell[i]) ** 2)
            levels.append([hat])
            if nxt < 0:
                fns.append(lambda A, alg, hat=hat, sh=sh, sn=sn: explicit_rk_step(
                    [sh * c2[hat] * A(hat)], sn - sh, [[0.0]], [1.0], alg))
                levels.append([hat])
            else:
                fns.append(lambda A, alg, hat=hat, nxt=nxt, sh=sh, sn=sn: explicit_rk_step(
                    [sh * c2[hat] * A(hat), sn * c2[nxt] * A(nxt)], sn - sh, [[0.0], [1.0]], [0.5, 0.5], alg))
                levels.append([hat, nxt])
            q.append(0.0)
        return LinearChain(fns, torch.tensor(q, dtype=F64), levels, self.levels.numel())

    @property
    def nfe(self) -> int:
        return 2 * int(self.steps) - 1

    def noise_levels(self, sigma=None):
        """The levels the steps read (σ̂_i and σ_{i+1} > 0, decreasing): α = 1, s = σ (ve), or
        α = 1/√(1+σ²), s = σ/√(1+σ²) (vp). train.sigma is not used."""
        if self.score_levels == "vp":
            c = 1 / (1 + self.levels ** 2).sqrt()
            return c, self.levels * c
        return torch.ones_like(self.levels), self.levels.clone()

    def sample(self, model, replicates: int, dim: int, generator=None, device="cpu", progress=False, dtype=F64):
        """M particles per replicate through the step map, in float64 (the VE levels span σ² ∈ [4e-6, 6400])."""
        return super().sample(model, replicates, dim, generator, device, progress, F64)
