"""The exact score (or flow-matching velocity) of a Gaussian mixture at the sampler's noise levels (`model=oracle`
on data=mixture)."""
from __future__ import annotations

import torch

from gsm.checks import choice
from gsm.data.mixture import GaussianMixture
from gsm.scores.base import ScoreModel
from gsm.scores.nets import PREDICTS


class MixtureScore(ScoreModel):
    """s_l(y) = ∇ log p_{α_l, s_l}(y), the responsibility-weighted mix of the component scores
    (`gsm.data.mixture.GaussianMixture.score`, float64), the same for every replicate; for sampler=flow
    (predicts=velocity) w_l(y) = E[x₁ − x₀ | y] at the path's level (`GaussianMixture.velocity`). Not linear,
    set rather than trained: it runs through the samplers' non-linear path, model(y, l).

    Args:
        mixture: the data's mixture.  alphas, noise_stds: (L,) the sampler's levels y = α_l x + s_l z.
        predicts: score | velocity (what the sampler reads, `gsm.pipeline.kinds.objective_predicts`)."""

    linear = False
    requires_training = False

    def __init__(self, mixture: GaussianMixture, alphas: torch.Tensor, noise_stds: torch.Tensor,
                 predicts: str = "score"):
        super().__init__()
        self.mixture = mixture
        self.field = mixture.velocity if choice("predicts", predicts, PREDICTS) == "velocity" else mixture.score
        self.levels = [(float(a), float(s)) for a, s in zip(alphas.tolist(), noise_stds.tolist())]

    def forward(self, y: torch.Tensor, level: int = 0) -> torch.Tensor:
        """y (…, d) in any dtype → s_l(y) (or w_l(y)) (…, d) in y's dtype, computed in float64."""
        alpha, std = self.levels[int(level)]
        return self.field(y, alpha, std).to(y.dtype)
