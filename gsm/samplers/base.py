"""The sampler interface: what every part of gsm may call on a sampler (docs/architecture.md).

A sampler is one class (score_sde_pytorch's `Predictor`, EDM's sampler function): the config names it
with `sampler._target_` and the pipeline (`gsm.pipeline.run`) uses only the members below. For a linear
score s_l(y) = −A_l y every sampler in gsm is a linear Gaussian chain x ← M_k x + L_k ξ_k, so its law is
exact: N(0, C) with C ← M C Mᵀ + L Lᵀ (`gsm.samplers.linear_chain.LinearChain`).

Shapes: R replicates, L noise levels, d dimensions, M particles; A (R, L, d, d) float64.
"""
from __future__ import annotations

import abc

import torch


class Sampler(abc.ABC):
    """A sampler for scores trained at its noise levels y = α_l x + s_l z (l = 0..L−1).

    Required: `noise_levels`, `covariance`, `unstable`, `sample`, `prediction`, and the attribute
    `particles` (M). The rest have defaults: no stationary law, nothing extra to report or log, and no
    diagonal (Fourier) law, so `data.kind=texture` refuses the sampler with a one-line error.
    `requires_linear_score` (a class attribute): the sampler reads the score's matrices (`model.linear`),
    so validation refuses a non-linear model with it before any training."""

    requires_linear_score = False     # unannotated: not a dataclass field of the subclasses
    particles: int

    @abc.abstractmethod
    def noise_levels(self, sigma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_l), (s_l): float64 (L,), the DSM levels the score is trained at (σ: Langevin's one level)."""

    @abc.abstractmethod
    def covariance(self, A: torch.Tensor) -> torch.Tensor:
        """The exact output law's covariance C (R, d, d) float64 for score matrices A (R, L, d, d)."""

    @abc.abstractmethod
    def unstable(self, A: torch.Tensor) -> torch.Tensor:
        """(R,) bool: replicates with no finite law (left out of the means)."""

    @abc.abstractmethod
    def sample(self, model, replicates: int, dim: int, generator=None, device="cpu", progress=False,
               dtype=torch.float32) -> torch.Tensor:
        """M particles per replicate (R, M, d); a linear model (`model.linear`) through its matrices,
        any other model called as model(y, l)."""

    @abc.abstractmethod
    def prediction(self, eigenvalues, *, n, sigma=None, tau=0.0, batch_size=1, particles=None,
                   symmetric=False, sgd_steps=None, init="zeros") -> dict:
        """The theory's E[W2²] term by term (docs/theory.md): float terms with `total` and `particles` (the
        1/M part), `kernel_n`, `kernel_tau`, `bias_per_eigenvalue`, `eigenvalues`, `warnings`, and the
        diagnostics `eps_tau`, `d_over_n` when defined. n=None: the score is not fitted to data; tau=0:
        not trained by SGD; sgd_steps, init: the finite SGD budget from A₀ = init."""

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
        """True when the run can be computed per eigenvalue of Σ (the `spectral` backend of
        `gsm.pipeline.backends`): the score is a function of Σ or Σ̂ and the sampler supports it."""
        return False

    # --- the diagonal (Fourier) case: every A_l diagonal in one basis, a (..., L, F) coefficients

    init_var: float = 1.0      # c₀: x_T ~ N(0, c₀ I)

    def diagonal_variance(self, a: torch.Tensor) -> torch.Tensor:
        """Exact output variance per coefficient, (..., L, F) → (..., F) float64."""
        raise NotImplementedError(f"sampler {type(self).__name__} has no diagonal (Fourier) law")

    def diagonal_sample(self, a: torch.Tensor, xh: torch.Tensor, noise) -> torch.Tensor:
        """Runs the chain on transformed particles xh (R, M, F...) with coefficients a (R, 1, L, F...);
        noise() gives a fresh transformed standard normal."""
        raise NotImplementedError(f"sampler {type(self).__name__} has no diagonal (Fourier) law")

    @property
    def reverse_chain(self):
        """The DDPM-type reverse chain the sampler runs (`ReverseChain`: per step x ← (c_k − g_k A) x + √q_k ξ),
        which the Fourier τ kernel expands exactly; None for other samplers."""
        return None

    @property
    def has_diagonal_law(self) -> bool:
        """Whether `diagonal_variance` / `diagonal_sample` are implemented (data.kind=texture)."""
        return type(self).diagonal_variance is not Sampler.diagonal_variance
