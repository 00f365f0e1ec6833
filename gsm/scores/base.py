"""The score-model interface: what the pipeline and the samplers may ask of a score model.

A score model is a torch module called as model(y, l) → s_l(y) on y (R, M, d), l the noise level. It
declares whether it is *linear*, s_l(y) = −A_l y with `matrices()` → A (R, L, d, d) float64 (then the
samplers' laws are exact and particles use the fused matrix path), and whether it needs training.
"""
from __future__ import annotations

from torch import nn


class ScoreModel(nn.Module):
    """Base of gsm's score models. Class attributes (the declared interface):

    linear: s_l(y) = −A_l y, with `matrices()` (R, L, d, d) float64 and `set_matrices(A)`.
    requires_training: False for closed-form scores (the oracle), which are set, not trained.
    symmetric: trained with the symmetrised DSM gradient (the symmetric variant, theory note §5.3).
    data_kind: the data.kind the model is built for.
    exact: the exact score of the data (an oracle). On data whose exact score is not linear (data=mixture)
        the backend uses the data's own (`gsm.scores.mixture.MixtureScore`).
    from_data: set from the training samples by `fit(x)` (x (R, N, d)) instead of trained (model=empirical)."""

    linear = False
    requires_training = True
    symmetric = False
    data_kind = "gaussian"     # the data.kind it is built for: gaussian (d×d) | texture (Fourier-diagonal)
    exact = False
    from_data = False


class UserScore(ScoreModel):
    """A user's batched module (one whose constructor takes `replicates`) that does not subclass
    ScoreModel: a neural score, called as module(y, l) or module(y); declares nothing else."""

    def __init__(self, module: nn.Module, conditioned: bool):
        super().__init__()
        self.module, self.conditioned = module, conditioned
        self.requires_training = bool(getattr(module, "requires_training", True))

    def forward(self, y, level: int = 0):
        return self.module(y, level) if self.conditioned else self.module(y)
