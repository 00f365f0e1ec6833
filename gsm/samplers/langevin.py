"""Langevin sampling (ULA), `sampler=langevin`: x_{k+1} = x_k + γ s(x_k) + √(2γ) ξ_k (theory note §3).

For a linear score s(x) = −A x ULA is the one-level chain x ← (I − γA) x + √(2γ) ξ
(`gsm.theory.langevin.ula_chain`, the step map); its exact law, stationary law and prediction have
closed forms (`gsm.theory.langevin`: `langevin_covariance`, `langevin_variance`, `ULALaw`), the fast paths
of this sampler, tested equal to the chain's. Any other score runs through `langevin_sample`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from gsm.checks import choice, number
from gsm.samplers.base import Sampler
from gsm.theory.bures import psd_sqrt
from gsm.theory.langevin import ULALaw, langevin_covariance, langevin_variance, ula_bias_terms, ula_chain, ula_warnings
from gsm.training.prefetch import background_draws, prefetched


def langevin_sample(score_fn, x0: torch.Tensor, gamma: float, steps: int,
                    generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """K steps of ULA from x0 for any score: x ← x + γ s(x) + √(2γ) ξ. x0: (..., M, d)."""
    x = x0.clone()
    for _ in tqdm(range(steps), desc="Langevin", disable=not progress, leave=False):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + gamma * score_fn(x) + math.sqrt(2 * gamma) * noise
    return x


def linear_langevin_sample(A: torch.Tensor, x0: torch.Tensor, gamma: float, steps: int,
                           generator: torch.Generator | None = None, progress: bool = False,
                           background: bool | None = None) -> torch.Tensor:
    """ULA with s(x) = −A x, one fused step x ← x Pᵀ + √(2γ) ξ (P = I − γA).
    A: (R, d, d), x0: (R, M, d) → (R, M, d). background: draw ξ_{k+1} on a second core while step k runs
    (`gsm.prefetch`; same numbers). None: when on the CPU, large, and torch leaves a core idle."""
    Pt = (torch.eye(A.shape[-1], device=A.device, dtype=x0.dtype) - gamma * A.to(x0.dtype)).transpose(-1, -2)
    x, nxt = x0.clone(), torch.empty_like(x0)
    c = math.sqrt(2 * gamma)
    if background is None:
        background = background_draws(x0.device, x0.numel())
    # preallocated noise buffers; two in the background, so that one is drawn into while the other is used
    noise = [torch.empty_like(x0) for _ in range(1 + background)]

    def draw(k):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype, out=noise[k % len(noise)])

    draws = prefetched(draw, steps, background)
    for xi in tqdm(draws, total=steps, desc="Langevin", disable=not progress, leave=False):
        torch.baddbmm(xi, x, Pt, beta=c, out=nxt)        # the next state in place, no allocation
        x, nxt = nxt, x
    return x


def gaussian_sample(C: torch.Tensor, M: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """M draws of N(0, C), x = z C^{½} (eigenvalues clamped at 0, so PSD C of any rank works).
    C: (R, d, d) float64 → (R, M, d) float64; a replicate with a non-finite C gets NaN particles."""
    finite = torch.isfinite(C).flatten(-2).all(-1)[..., None, None]
    eye = torch.eye(C.shape[-1], dtype=C.dtype, device=C.device)
    root = psd_sqrt(torch.where(finite, C, eye))
    z = torch.randn(*C.shape[:-2], M, C.shape[-1], generator=generator, device=C.device, dtype=C.dtype)
    return torch.where(finite, z @ root, torch.full_like(z, float("nan")))


@dataclass
class Langevin(Sampler):
    """ULA with step γ for K steps from N(0, init_var·I), with M independent particles (chains).

    The score is trained at the single noise level σ of `train.sigma` (α = 1, s = σ).
    """

    gamma: float = 0.05
    steps: int = 500
    particles: int = 2000
    init_var: float = 1.0
    particles_from: str = "chains"

    requires_linear_score = False
    allows_singular = True          # rank-deficient Σ: the score is read at noise σ > 0 (m = λ + σ² > 0)

    def __post_init__(self):
        number("sampler.gamma", self.gamma, 0, low_open=True)
        number("sampler.steps", self.steps, 0, integer=True)
        number("sampler.particles", self.particles, 2, integer=True)
        number("sampler.init_var", self.init_var, 0)
        choice("sampler.particles_from", self.particles_from, ("chains", "law"))
        self.chain = ula_chain(self.gamma, self.steps)

    def noise_levels(self, sigma: float):
        """One level: y = x + σ z."""
        return torch.ones(1, dtype=torch.float64), torch.full((1,), float(sigma), dtype=torch.float64)

    def sample(self, model, replicates: int, dim: int, generator=None, device="cpu", progress=False,
               dtype=torch.float64):
        """M particles per replicate after K ULA steps: (R, M, d). The chains run in `dtype` (the
        training dtype: float32 noise is twice as fast to draw); W2 is then evaluated in float64.
        particles_from="law" (linear scores) draws them from the exact law N(0, C_K) instead: the
        same distribution as the chains' output, for M·d random numbers instead of K·M·d."""
        if self.particles_from == "law" and model.linear:
            C = self.covariance(model.matrices()).to(device)
            return gaussian_sample(C, self.particles, generator).to(dtype)
        x0 = math.sqrt(self.init_var) * torch.randn(replicates, self.particles, dim, generator=generator,
                                                    device=device, dtype=dtype)
        if model.linear:
            return linear_langevin_sample(model.matrices()[:, 0], x0, self.gamma, self.steps, generator, progress)
        return langevin_sample(lambda y: model(y, 0), x0, self.gamma, self.steps, generator, progress)

    def covariance(self, A: torch.Tensor) -> torch.Tensor:
        """Exact law of the output after K steps given A (R, 1, d, d) → (R, d, d)."""
        return langevin_covariance(A[:, 0], self.gamma, self.steps, self.init_var)

    def covariance_stationary(self, A: torch.Tensor) -> torch.Tensor:
        """Stationary law (K → ∞) given A (R, 1, d, d) → (R, d, d)."""
        return langevin_covariance(A[:, 0], self.gamma, None)

    def law(self, lam):
        """The closed-form law map (`ULALaw`), equal to the chain's `ChainLaw(ula_chain(γ, K))`."""
        return ULALaw(self.gamma, self.steps, self.init_var)

    def bias_terms(self, lam, h, sigma=None) -> dict:
        """noise (σ's own bias), discretization (the stationary law at γ) and mixing (finite K)."""
        return ula_bias_terms(lam, float(sigma), self.gamma, self.steps, h)

    def prediction_warnings(self, lam, *, n=None, sigma=None) -> list[str]:
        return ula_warnings(n, float(sigma), self.gamma)

    def check_step(self, lam_min: float, sigma: float) -> None:
        """ULA diverges even with the exact score when γ ≥ 2(λ_min + σ²) (theory note §3)."""
        bound = 2 * (float(lam_min) + float(sigma) ** 2)
        if not self.gamma < bound:
            raise ValueError(f"gamma must be < 2(λ_min + σ²) = {bound:.6g} (Langevin diverges even with the exact "
                             f"score, theory note §3), got {self.gamma}")

    def diagonal_variance(self, a: torch.Tensor) -> torch.Tensor:
        """c_K per coefficient, a (..., 1, F) → (..., F) (`langevin_variance`, the closed form)."""
        return langevin_variance(a[..., 0, :], self.gamma, self.steps, self.init_var)
