"""The backends of data.kind=dataset (data=digits | patches, `gsm.data.pool`): the mixture's backends
(`gsm.pipeline.mixture`: w2_ot, its floor, the surrogate's prediction and the "NOT Gaussian" verdict) on a
finite pool of real samples. Each replicate's N training samples are drawn without replacement from the pool
(`SamplePool.split`); its fresh target samples (w2_ot, the sliced W2², memorized_fraction_fresh) come from its
held-out rest, without replacement, so that two fresh samples share no point. No exact score (model=oracle
is refused by validation); model=empirical, linear and neural scores run as on the mixture."""
from __future__ import annotations

import torch

from gsm.pipeline.mixture import MixtureLinearBackend, MixtureNeuralBackend


class PoolDraws:
    """The data draws of a pool: training sets and held-out samples per replicate (module doc)."""

    def make_target(self):
        return self.spec.data.pool

    def draw_data(self):
        pool = self.spec.data.pool
        self.results["dataset"] = {"description": pool.description, "d": pool.dim, "pool": pool.size,
                                   "n": self.N, "held_out": pool.size - self.N}
        self.split = pool.split(self.R, self.N, generator=self.gen, device=self.device)
        self.train_x = self.split.train     # kept: memorized_fraction and the probe read it
        return self.train_x

    def held_out(self):
        """The split of the kept replicates (`sample` sets `kept`)."""
        return self.split.select(self.kept)

    def fresh_samples(self) -> torch.Tensor:
        """Up to M held-out samples per kept replicate, (R', M', d) float64 (M' ≤ the held-out rest)."""
        return self.held_out().fresh(self.particles.shape[1], generator=self.gen)[0]

    def fresh_pair(self, m: int) -> torch.Tensor:
        """Two disjoint held-out samples of min(m, held-out // 2) points per kept replicate: (2, R', m', d)."""
        return self.held_out().fresh(m, parts=2, generator=self.gen)


class DatasetLinearBackend(PoolDraws, MixtureLinearBackend):
    """A linear score trained on the pool's samples: its law, w2_exact and prediction are those of the pool's
    Gaussian surrogate N(0, Σ); the OT distances to held-out samples the true ones."""


class DatasetNeuralBackend(PoolDraws, MixtureNeuralBackend):
    """A neural score (model=mlp, user models) or model=empirical trained on, or set from, the pool's samples."""
