"""The DDPM and DDIM samplers (`sampler=ddpm`, `sampler=ddim`): `gsm.samplers.base.Sampler` classes over
the reverse chains of `gsm.samplers.reverse_chain` (schedule, timestep grid, exact law), with the
prediction of `gsm.theory.diffusion` and the W2² trajectory along the chain in TensorBoard."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gsm.checks import choice, number
from gsm.samplers.base import Sampler
from gsm.samplers.reverse_chain import (FINALS, VARIANCES, alphas_cumprod, ddim_chain, ddpm_chain,
                                        ddpm_covariance, ddpm_variance, exact_score_matrices,
                                        grid_coefficients, linear_beta_schedule, linear_reverse_sample,
                                        reverse_sample, timestep_grid)
from gsm.theory.bures import bures_wasserstein2
from gsm.theory.diffusion import diffusion_prediction

# ----------------------------------------------------------------------------- pipeline samplers

def _check_schedule(T, t_min, beta_start, beta_end, scaled, steps) -> None:
    """sampler.T ≥ 1, 0 ≤ t_min < T, 0 < beta_start < beta_end < 1 (scaled: T > 20 and β_T = beta_end·1000/T < 1),
    steps null or in [1, T − t_min]: one-line ValueErrors naming the key."""
    T = number("sampler.T", T, 1, integer=True)
    t_min = number("sampler.t_min", t_min, 0, T - 1, integer=True)
    b0 = number("sampler.beta_start", beta_start, 0, 1, low_open=True, high_open=True)
    b1 = number("sampler.beta_end", beta_end, b0, 1, low_open=True, high_open=True)
    if choice("sampler.scaled", scaled, (True, False)):
        number("sampler.T", T, 20, low_open=True, integer=True)
        if not b1 * 1000 / T < 1:
            raise ValueError(f"sampler.beta_end must be < T/1000 = {T / 1000} with scaled betas "
                             f"(β_T = beta_end·1000/T < 1), got {beta_end}")
    number("sampler.steps", steps, 1, T - t_min, integer=True, none_ok=True)


@dataclass
class _Diffusion(Sampler):
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
        _check_schedule(self.T, self.t_min, self.beta_start, self.beta_end, self.scaled, self.steps)
        choice("sampler.final", self.final, FINALS)
        number("sampler.particles", self.particles, 2, integer=True)
        number("sampler.init_var", self.init_var, 0)
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
        if model.linear:
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

    @property
    def reverse_chain(self):
        """The DDPM/DDIM chain (`gsm.samplers.reverse_chain.ReverseChain`) on its timestep grid."""
        return self.chain

    def diagonal_variance(self, a: torch.Tensor) -> torch.Tensor:
        """v ← (c_k − g_k a_k)² v + q_k per coefficient, a (..., L, F) → (..., F)."""
        return ddpm_variance(grid_coefficients(self.chain, a), self.chain, self.init_var)

    def diagonal_sample(self, a: torch.Tensor, xh: torch.Tensor, noise) -> torch.Tensor:
        """x̂ ← (c_k − g_k a_k) x̂ + √q_k ξ̂ per coefficient, k = K..0; a (R, 1, L, F...)."""
        ch = self.chain
        grid = a.new_zeros(*a.shape[:2], ch.K + 1, *a.shape[-2:])
        grid[:, :, ch.levels] = a
        for k in range(ch.K, -1, -1):
            xh = (float(ch.c[k]) - float(ch.g[k]) * grid[:, :, k]) * xh
            if float(ch.q[k]) > 0:
                xh = xh + math.sqrt(float(ch.q[k])) * noise()
        return xh

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

    def __post_init__(self):
        choice("sampler.variance", self.variance, VARIANCES)
        super().__post_init__()

    def _chain(self, ab):
        return ddpm_chain(ab, self.variance, self.final, self.noise_last)


@dataclass
class DDIM(_Diffusion):
    """DDIM sampler (Song et al.) with stochasticity η (0: deterministic; see `ddim_chain`)."""

    eta: float = 0.0

    def __post_init__(self):
        number("sampler.eta", self.eta, 0, 1)
        super().__post_init__()

    def _chain(self, ab):
        return ddim_chain(ab, self.eta, self.final)
