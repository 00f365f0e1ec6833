"""The sampler interface: what every part of gsm may call on a sampler (docs/architecture.md).

A sampler is one class (score_sde_pytorch's `Predictor`, EDM's sampler function): the config names it
with `sampler._target_` and the pipeline (`gsm.pipeline.run`) uses only the members below. A linear
sampler *is its step map*: for a linear score s_l(y) = −A_l y it declares the chain it runs,
x ← M_k x + √q_k ξ_k with M_k built from the score matrices at the levels step k reads
(`chain`, a `gsm.theory.chain.LinearChain`). Everything else derives from it: the exact law in full
matrices (`covariance`), per eigenvalue and per Fourier coefficient (`diagonal_variance`), the particles
(`sample`, `diagonal_sample`) and the whole prediction (`law` → `gsm.theory.prediction.sampler_prediction`,
with the training objective's score-error model). A sampler whose state is not x alone (a multistep
scheduler) overrides `law` with a push (`gsm.theory.law.PushLaw`); one with a closed form (ULA, the
continuous VP laws) may override a member with a faster path, tested equal to the derived one.

Shapes: R replicates, L noise levels, d dimensions, M particles; A (R, L, d, d) float64.
"""
from __future__ import annotations

import abc
import math

import torch

from gsm.theory.law import ChainLaw
from gsm.theory.prediction import w2_commuting


class Sampler(abc.ABC):
    """A sampler for scores trained at its noise levels y = α_l x + s_l z (l = 0..L−1).

    Required: `noise_levels`, the attribute `particles` (M), and either the step map `chain` (with
    `init_var`, the start N(0, init_var·I)) or overrides of the members that use it. Declared
    capabilities: `requires_linear_score` (the sampler runs only on linear scores' matrices: True unless
    it overrides `sample` for any score), `allows_singular` (Σ may be rank-deficient)."""

    particles: int
    chain = None                  # LinearChain: the step map (None: the sampler overrides what uses it)
    init_var = 1.0                # c₀: x_T ~ N(0, c₀ I)
    requires_linear_score = True
    allows_singular = False

    @abc.abstractmethod
    def noise_levels(self, sigma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_l), (s_l): float64 (L,), the DSM levels the score is trained at (σ: Langevin's one level)."""

    # --- the laws, from the step map --------------------------------------------------------

    def initial_covariance(self):
        """C_0: a number (·I) or (d, d)."""
        return self.init_var

    def initial_variance(self, lam: torch.Tensor):
        """C_0 per eigenvalue of Σ: a number or (d,)."""
        return self.init_var

    def covariance(self, A: torch.Tensor) -> torch.Tensor:
        """The exact output law's covariance C (R, d, d) float64 for score matrices A (R, L, d, d)."""
        return self.chain.covariance(A, self.initial_covariance())

    def unstable(self, A: torch.Tensor) -> torch.Tensor:
        """(R,) bool: replicates with no finite law (left out of the means). A finite chain has a finite law
        for any finite A: only non-finite A is flagged."""
        return ~torch.isfinite(A).flatten(1).all(1)

    def sample(self, model, replicates: int, dim: int, generator=None, device="cpu", progress=False,
               dtype=torch.float32) -> torch.Tensor:
        """M particles per replicate (R, M, d) from N(0, init_var·I) through the chain, in `dtype`
        (a linear model: its matrices)."""
        x = math.sqrt(self.init_var) * torch.randn(replicates, self.particles, dim, generator=generator,
                                                   device=device, dtype=dtype)
        return self.chain.sample(model.matrices().to(device), x, generator)

    def law(self, lam: torch.Tensor):
        """The law map (`gsm.theory.law`) the prediction expands, at the eigenvalues λ of Σ."""
        return ChainLaw(self.chain, self.initial_variance(lam))

    def bias_terms(self, lam: torch.Tensor, h: torch.Tensor, sigma=None) -> dict:
        """The exact-score bias Σ(√λ − √h)² (h: the output variance with the exact scores; σ: train.sigma),
        split into named parts that sum to it (results.json `prediction_terms`)."""
        return {"discretization": w2_commuting(lam, h)}

    def check_prediction(self, lam: torch.Tensor, n=None) -> None:
        """Raises ValueError when the prediction does not exist for this spectrum (e.g. a singular Σ read
        where the score is Σ⁻¹). Default: it always exists."""

    def prediction_warnings(self, lam: torch.Tensor, *, n=None, sigma=None) -> list[str]:
        """The sampler's own caveats about its prediction."""
        return []

    # --- optional members ------------------------------------------------------------------

    def covariance_stationary(self, A: torch.Tensor) -> torch.Tensor | None:
        """The law as the number of steps → ∞ (Langevin), or None."""
        return None

    def bind(self, cov: torch.Tensor) -> dict:
        """Called with the target Σ before sampling (e.g. VP's init=prior); returns results keys."""
        return {}

    def results_extra(self) -> dict:
        """Extra results.json keys after evaluation (e.g. how the law was computed)."""
        return {}

    def log_extra(self, writer, A: torch.Tensor, cov: torch.Tensor, step: int) -> None:
        """Extra TensorBoard output (e.g. the W2² trajectory along a reverse chain)."""

    def check_step(self, lam_min: float, sigma: float) -> None:
        """Raises ValueError (naming the parameter and its range) when the step diverges even with the exact
        score of a target with smallest eigenvalue λ_min (σ: the training noise); a cross-group rule that
        `gsm.pipeline.validate` applies. Default: no such bound."""

    def spectral_path(self, score_is_spectral: bool) -> bool:
        """True when the run can be computed per eigenvalue of Σ (the `spectral` backend,
        `gsm.pipeline.spectral`): the score is a function of Σ or Σ̂ and the sampler supports it."""
        return False

    # --- the diagonal (Fourier) case: every A_l diagonal in one basis, a (..., L, F) coefficients

    def diagonal_variance(self, a: torch.Tensor) -> torch.Tensor:
        """Exact output variance per coefficient, (..., L, F) → (..., F) float64."""
        return self.chain.variance(a, self.init_var)

    def diagonal_sample(self, a: torch.Tensor, xh: torch.Tensor, noise) -> torch.Tensor:
        """Runs the chain on transformed particles xh (R, M, F...) with coefficients a (R, 1, L, F...), in
        place; noise() gives a fresh transformed standard normal like xh."""
        shape = xh.shape
        flat = lambda t: t.reshape(*t.shape[:-2], -1) if t.ndim > 3 else t
        out = self.chain.run_diagonal(flat(a) if a.ndim > 4 else a, flat(xh), lambda: flat(noise()))
        return out.reshape(shape)

    @property
    def has_diagonal_law(self) -> bool:
        """Whether the sampler has a diagonal (Fourier) law (data.kind=texture): a step map or its own."""
        return self.chain is not None or type(self).diagonal_variance is not Sampler.diagonal_variance
