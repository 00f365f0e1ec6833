"""The exact score of a Gaussian mixture at the sampler's noise levels (`model=oracle` on data=mixture)."""
from __future__ import annotations

import torch

from gsm.data.mixture import GaussianMixture
from gsm.scores.base import ScoreModel


class MixtureScore(ScoreModel):
    """s_l(y) = ∇ log p_{α_l, s_l}(y), the responsibility-weighted mix of the component scores
    (`gsm.data.mixture.GaussianMixture.score`, float64), the same for every replicate. Not linear, set
    rather than trained: it runs through the samplers' non-linear path, model(y, l).

    Args:
        mixture: the data's mixture.  alphas, noise_stds: (L,) the sampler's levels y = α_l x + s_l z."""

    linear = False
    requires_training = False

    def __init__(self, mixture: GaussianMixture, alphas: torch.Tensor, noise_stds: torch.Tensor):
        super().__init__()
        self.mixture = mixture
        self.levels = [(float(a), float(s)) for a, s in zip(alphas.tolist(), noise_stds.tolist())]

    def forward(self, y: torch.Tensor, level: int = 0) -> torch.Tensor:
        """y (…, d) in any dtype → s_l(y) (…, d) in y's dtype, computed in float64."""
        alpha, std = self.levels[int(level)]
        return self.mixture.score(y, alpha, std).to(y.dtype)
