"""Langevin sampling (ULA) and the exact law of its output for a linear score.

ULA (theory note §3): x_{k+1} = x_k + γ s(x_k) + √(2γ) ξ_k. With s(x) = −A x this is
x_{k+1} = P x_k + √(2γ) ξ_k, P = I − γA, so from x_0 ~ N(0, C_0) the law stays Gaussian:

    C_K = P^K C_0 P^{Kᵀ} + Σ_{k<K} P^k (2γ I) P^{kᵀ},   C_∞ solves A C + C Aᵀ − γ A C Aᵀ = 2I.

A sampler is a small class used by the pipeline (gsm.experiment); a new sampler is one new class
with the same five methods (see `Langevin`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from gsm.checks import choice, number
from gsm.samplers.base import Sampler
from gsm.theory.bures import psd_sqrt
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


def _sandwich(P, C):
    return P @ C @ P.transpose(-1, -2)


def lyapunov_sum(P: torch.Tensor, Q: torch.Tensor, K: int) -> torch.Tensor:
    """S_K = Σ_{k<K} P^k Q P^{kᵀ} by binary doubling (O(log K) products, any P, stable or not).
    P, Q: (..., d, d) → (..., d, d)."""
    S = torch.zeros_like(Q)
    Pa = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device).expand_as(P).clone()  # P^(terms in S)
    Pp, Sp = P, Q                                                                     # P^(2^j), S_(2^j)
    while K > 0:
        if K & 1:
            S = S + _sandwich(Pa, Sp)
            Pa = Pa @ Pp
        K >>= 1
        if K:
            Sp = Sp + _sandwich(Pp, Sp)
            Pp = Pp @ Pp
    return S


def discrete_lyapunov(P: torch.Tensor, Q: torch.Tensor, max_doublings: int = 64) -> torch.Tensor:
    """C = Σ_{k≥0} P^k Q P^{kᵀ}, the solution of C = P C Pᵀ + Q for spectral radius ρ(P) < 1, by
    Smith's doubling (C ← C + P C Pᵀ, P ← P²) until P^(2^j) vanishes. Non-finite where ρ(P) ≥ 1."""
    C, Pj = Q.clone(), P.clone()
    for _ in range(max_doublings):
        C = C + _sandwich(Pj, C)
        Pj = Pj @ Pj
        if not torch.isfinite(Pj).all() or Pj.abs().amax() < 1e-30:
            break
    bad = ~(Pj.abs().flatten(-2).amax(-1) < 1e-12)
    return torch.where(bad[..., None, None], torch.full_like(C, float("nan")), C)


def langevin_covariance(A: torch.Tensor, gamma: float, steps: int | None = None,
                        init_var: float = 1.0) -> torch.Tensor:
    """Exact covariance of ULA with s(x) = −A x after K = `steps` steps from N(0, init_var·I)
    (steps=None: the stationary law, NaN where ULA is unstable). A: (..., d, d) → (..., d, d) float64."""
    A = A.to(torch.float64)
    eye = torch.eye(A.shape[-1], dtype=torch.float64, device=A.device)
    P = eye - gamma * A
    Q = (2 * gamma) * eye.expand_as(A)
    if steps is None:
        return discrete_lyapunov(P, Q)
    PK = torch.linalg.matrix_power(P, int(steps))
    return lyapunov_sum(P, Q, int(steps)) + init_var * PK @ PK.transpose(-1, -2)


def langevin_unstable(A: torch.Tensor, gamma: float) -> torch.Tensor:
    """ULA is unstable when |1 − γμ| ≥ 1 for some eigenvalue μ of A (complex for non-symmetric A),
    or when A is not finite. A: (..., d, d) → bool (...)."""
    A = A.to(torch.float64)
    finite = torch.isfinite(A).flatten(-2).all(-1)
    mu = torch.linalg.eigvals(torch.where(finite[..., None, None], A, torch.zeros_like(A)))
    return ~finite | ((1 - gamma * mu).abs() >= 1).any(-1)


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

    def __post_init__(self):
        number("sampler.gamma", self.gamma, 0, low_open=True)
        number("sampler.steps", self.steps, 0, integer=True)
        number("sampler.particles", self.particles, 2, integer=True)
        number("sampler.init_var", self.init_var, 0)
        choice("sampler.particles_from", self.particles_from, ("chains", "law"))

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

    def unstable(self, A: torch.Tensor) -> torch.Tensor:
        """Replicates without a K-step law: non-finite A. A finite A gives a finite law after K steps even
        where ULA has no stationary law (|1 − γμ| ≥ 1, e.g. an untrained A = 0): that law is a result
        (`langevin_unstable` is the K → ∞ question; the pipeline drops laws that overflow). (R,) bool."""
        return ~torch.isfinite(A).flatten(1).all(1)

    def prediction(self, eigenvalues, *, n, sigma, tau, batch_size, particles, symmetric=False,
                   sgd_steps=None, init="zeros") -> dict:
        """The theory's prediction of E[W2²] term by term (gsm.theory.langevin.langevin_prediction); sgd_steps=k
        includes the SGD transient of k steps from A₀ (init: zeros | identity)."""
        from gsm.theory.langevin import langevin_prediction
        return langevin_prediction(eigenvalues, n=n, sigma=sigma, tau=tau, gamma=self.gamma,
                                   batch_size=batch_size, steps=self.steps, init_var=self.init_var,
                                   particles=particles, symmetric=symmetric, sgd_steps=sgd_steps, init=init)

    def check_step(self, lam_min: float, sigma: float) -> None:
        """ULA diverges even with the exact score when γ ≥ 2(λ_min + σ²) (theory note §3)."""
        bound = 2 * (float(lam_min) + float(sigma) ** 2)
        if not self.gamma < bound:
            raise ValueError(f"gamma must be < 2(λ_min + σ²) = {bound:.6g} (Langevin diverges even with the exact "
                             f"score, theory note §3), got {self.gamma}")

    def diagonal_variance(self, a: torch.Tensor) -> torch.Tensor:
        """c_K per coefficient, a (..., 1, F) → (..., F) (`langevin_k_step_variance`)."""
        return langevin_k_step_variance(a[..., 0, :], self.gamma, self.steps, self.init_var)

    def diagonal_sample(self, a: torch.Tensor, xh: torch.Tensor, noise) -> torch.Tensor:
        """K steps x̂ ← (1 − γa) x̂ + √(2γ) ξ̂ per coefficient, in place; a (R, 1, 1, F...)."""
        p, c = (1 - self.gamma * a[:, :, 0]).to(xh.dtype), math.sqrt(2 * self.gamma)   # complex once
        for _ in range(self.steps):
            xh.mul_(p).add_(noise(), alpha=c)
        return xh


def langevin_k_step_variance(a, gamma, steps, init_var):
    """c_K = r^K c₀ + 2γ Σ_{k<K} r^k, r = (1 − γa)², as r^K c₀ + 2γ (r^K − 1)/(r − 1): finite for every
    finite a, also at r = 1 (a = 0, an untrained score: c_K = c₀ + 2γK) where c_∞ of the closed form is not."""
    K = int(steps)
    rm1 = gamma * a * (gamma * a - 2)                          # r − 1, without cancellation
    rK = (1 + rm1) ** K
    ratio = torch.expm1(K * torch.log1p(rm1)) / rm1           # (r^K − 1)/(r − 1)
    ratio = torch.where(rm1 == 0, torch.full_like(rm1, float(K)), ratio)
    return rK * init_var + 2 * gamma * ratio
