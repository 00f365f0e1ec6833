"""The DDPM and DDIM samplers (`sampler=ddpm`, `sampler=ddim`): `gsm.samplers.base.Sampler` classes over
the reverse chains of `gsm.samplers.reverse_chain` (schedule, timestep grid, step map). Their exact laws
and prediction derive from the step map (`ReverseChain.linear_chain`); the bias is split into t_min,
discretization and initialization; the W2² trajectory along the chain goes to TensorBoard."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gsm.checks import choice, number
from gsm.samplers.base import Sampler
from gsm.samplers.reverse_chain import (FINALS, VARIANCES, alphas_cumprod, ddim_chain, ddpm_chain,
                                        exact_score_matrices, linear_beta_schedule, reverse_sample, timestep_grid)
from gsm.theory.bures import bures_wasserstein2
from gsm.theory.law import ChainLaw
from gsm.theory.prediction import w2_commuting
from gsm.training.objectives import DSM

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
    """Shared part of the DDPM/DDIM samplers: `reverse` the chain on the timestep grid, `chain` its step map."""

    T: int = 1000
    steps: int | None = None
    t_min: int = 0
    beta_start: float = 1e-4
    beta_end: float = 0.02
    scaled: bool = False
    final: str = "none"
    particles: int = 2000
    init_var: float = 1.0

    requires_linear_score = False

    def __post_init__(self):
        _check_schedule(self.T, self.t_min, self.beta_start, self.beta_end, self.scaled, self.steps)
        choice("sampler.final", self.final, FINALS)
        number("sampler.particles", self.particles, 2, integer=True)
        number("sampler.init_var", self.init_var, 0)
        betas = linear_beta_schedule(self.T, self.beta_start, self.beta_end, self.scaled)
        self.timesteps = timestep_grid(self.T, self.steps, self.t_min)
        self.reverse = self._chain(alphas_cumprod(betas)[self.timesteps])
        self.chain = self.reverse.linear_chain()

    def _chain(self, ab):
        raise NotImplementedError

    def noise_levels(self, sigma=None):
        """The levels the chain reads: α = √ᾱ_{t_k}, s = √(1−ᾱ_{t_k}) for k in `reverse.levels` (every
        sampling timestep; t_min too for tweedie with t_min > 0). σ (train.sigma) is not used."""
        ab = self.reverse.alpha_bar[self.reverse.levels]
        return ab.sqrt(), (1 - ab).sqrt()

    def sample(self, model, replicates: int, dim: int, generator=None, device="cpu", progress=False,
               dtype=torch.float64):
        """M particles per replicate from x_T ~ N(0, init_var·I), the chain run in `dtype`: (R, M, d)."""
        if model.linear:
            return super().sample(model, replicates, dim, generator, device, progress, dtype)
        x = math.sqrt(self.init_var) * torch.randn(replicates, self.particles, dim, generator=generator,
                                                   device=device, dtype=dtype)
        k0 = int(self.reverse.levels[0])
        return reverse_sample(lambda y, k: model(y, k - k0), x, self.reverse, generator)

    def bias_terms(self, lam, h, sigma=None) -> dict:
        """The exact-score bias split as t_min (the exact reverse process stopped at t_min, then the final
        map), initialization (x_T ~ N(0, v_T I) instead of N(0, S_T)) and discretization (the rest)."""
        ab = self.reverse.alpha_bar
        S_T = ab[-1] * lam + 1 - ab[-1]
        from_marginal = ChainLaw(self.chain, S_T).variance(DSM().target(lam, *self.noise_levels()))
        ab0 = float(ab[0])
        S0 = ab0 * lam + 1 - ab0
        final = {"none": S0, "rescale": S0 / ab0, "tweedie": ab0 * lam ** 2 / S0}[self.final]
        t_min, exact_init = w2_commuting(lam, final), w2_commuting(lam, from_marginal)
        return {"t_min": t_min, "discretization": exact_init - t_min, "initialization": w2_commuting(lam, h) - exact_init}

    def log_extra(self, writer, A, cov, step, max_points: int = 50, max_replicates: int = 16) -> None:
        """The exact W2²(law of x_{t_k}, true marginal ᾱΣ + (1−ᾱ)I) along the reverse trajectory, for the
        learned score (mean over ≤ 16 replicates) and the oracle score, at ≤ 50 timesteps (x axis: t)."""
        cov = cov.to(torch.float64)
        ab, K = self.reverse.alpha_bar, self.reverse.K
        eye = torch.eye(cov.shape[-1], dtype=torch.float64, device=cov.device)
        marg = ab.view(-1, 1, 1) * cov + (1 - ab.view(-1, 1, 1)) * eye      # (K+1, d, d)
        pts = torch.unique(torch.linspace(0, K, min(max_points, K + 1)).round().long())
        oracle = exact_score_matrices(cov, ab)[self.reverse.levels].unsqueeze(0)
        for name, AA in (("learned", A[:max_replicates]), ("oracle", oracle)):
            traj = self.chain.covariance(AA, self.init_var, trajectory=True)    # traj[j]: the law at t_{K−j}
            w2 = bures_wasserstein2(marg[pts], traj[:, K - pts]).mean(0)
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
