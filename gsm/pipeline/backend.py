"""The stages every backend of the pipeline implements (`gsm.pipeline.run.run_stages` calls them in order):

    data → score (fit) → sample (law, particles) → evaluate (W2²) → predict (theory) → record → log

A backend owns one representation of the covariances: full d×d matrices (`gsm.pipeline.matrix`),
per eigenvalue of Σ (`gsm.pipeline.spectral`) or per frequency of a stationary texture
(`gsm.pipeline.texture`). `gsm.pipeline.run.backend_for` picks it from the declared `data.kind`, the
sampler's `spectral_path` and the model's declared `linear`.
"""
from __future__ import annotations

import abc

from gsm.pipeline.record import combined_z, measured_stderr, record_prediction
from gsm.theory.regime import linear_regime


class Backend(abc.ABC):
    """Holds the run's specification (`gsm.pipeline.spec.RunSpec`: data, model, sampler, train and run
    settings), its results dict and warn(msg)."""

    def __init__(self, spec, results: dict, warn):
        self.spec, self.results, self.warn = spec, results, warn
        self.figures = spec.settings.figures     # figures=false: no figure or image (every number, scalar and text stays)

    @abc.abstractmethod
    def draw_data(self):
        """1. R independent data sets of N samples (or what the backend keeps of them)."""

    @abc.abstractmethod
    def fit_score(self, data, writer) -> dict:
        """2. The score at the sampler's noise levels: oracle, train.solver=exact or DSM-SGD. Returns the
        trainer's record ({"diverged_at": (R,)} when trained)."""

    @abc.abstractmethod
    def sample(self, fit: dict) -> bool:
        """3. The exact law and the particles, unstable replicates left out; False when none is left
        (the run is then `diverged`)."""

    @abc.abstractmethod
    def evaluate(self) -> None:
        """4. w2_exact, w2_empirical (mean ± s.e. over the stable replicates) into results."""

    def trace_sigma(self) -> float:
        """tr Σ, the scale of W2² (W2²(N(0, Σ), δ₀) = tr Σ)."""
        return float(self.spec.data.spectrum.sum())

    @abc.abstractmethod
    def predict(self) -> dict:
        """5. The theory's prediction, term by term (`gsm.theory.prediction.sampler_prediction` or the
        backend's own), with its `modelled` dict."""

    @abc.abstractmethod
    def regime_inputs(self) -> dict:
        """The run's numbers the regime verdict weighs (`gsm.theory.regime.linear_regime`), but `terms`."""

    def record(self, pred: dict) -> None:
        """The prediction's terms and the regime verdict into results."""
        r = self.results
        terms = record_prediction(r, pred, self.warn)
        if "w2_predicted_error" in r:
            r["z"] = combined_z(r)
        r["regime"] = linear_regime(terms=terms, modelled=pred.get("modelled"), remainders=pred.get("remainders"),
                                    resolution=measured_stderr(r), **self.regime_inputs())

    @abc.abstractmethod
    def log(self, writer, pred: dict) -> None:
        """6. TensorBoard scalars, figures (and their PNGs)."""
