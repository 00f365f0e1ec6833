"""The `train` config group as a checked value: `TrainSettings.from_config(cfg.train)`.

The group has no `_target_` (the pipeline reads its keys); this dataclass is its constructor, so that its
ranges are checked where they are defined, like every other group's (`gsm.pipeline.validate`)."""
from __future__ import annotations

from dataclasses import dataclass, fields

from gsm.checks import choice, number
from gsm.training.dsm import SAMPLING

SOLVERS = ("sgd", "exact")


@dataclass(frozen=True)
class TrainSettings:
    """DSM training (conf/train/default.yaml): solver sgd (DSM-SGD) | exact (the empirical minimiser), the
    DSM noise level σ > 0 (Langevin's one level), the SGD step τ > 0, batch b ≥ 1, steps ≥ 0, sampling
    with_replacement | epochs, and log_every ≥ 0 (train/dsm_loss every this many steps)."""

    solver: str = "sgd"
    sigma: float = 0.5
    tau: float = 0.005
    batch_size: int = 1
    steps: int = 20000
    sampling: str = "with_replacement"
    log_every: int = 100

    def __post_init__(self):
        choice("train.solver", self.solver, SOLVERS)
        number("train.sigma", self.sigma, 0, low_open=True)
        number("train.tau", self.tau, 0, low_open=True)
        number("train.batch_size", self.batch_size, 1, integer=True)
        number("train.steps", self.steps, 0, integer=True)
        choice("train.sampling", self.sampling, SAMPLING)
        number("train.log_every", self.log_every, 0, integer=True)

    @classmethod
    def from_config(cls, node) -> TrainSettings:
        """From cfg.train (a mapping); a key that is not a field is a one-line ValueError naming it."""
        names = [f.name for f in fields(cls)]
        for key in node:
            if key not in names:
                raise ValueError(f"train.{key} must be a key of the train group ({' | '.join(names)}), got {key}")
        return cls(**{k: node[k] for k in names if k in node})
