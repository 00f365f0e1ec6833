"""The empirical score (`model=empirical`): the exact score of the training set smoothed at each noise level,
the memorisation baseline every trained net sits between, together with the linear score.

With the N training points x_i of a replicate, the noised empirical law p̂_{α,s} = (1/N) Σ_i N(α x_i, s²I) has

    ∇ log p̂_{α,s}(y) = Σ_i r_i(y) (α x_i − y)/s²,  r_i(y) = softmax_i(−‖y − α x_i‖²/(2s²)),

(log-sum-exp, float64): at small s it pulls every sample onto a training point, so its samples copy the
training set (Bonnaire et al., arXiv 2505.17638). For sampler=flow (predicts=velocity) it is the closed-form
empirical velocity of Bertrand et al. (2506.03719): on y = αx₁ + s x₀, w(y) = E[x₁ − x₀ | y] = m − (y − αm)/s,
m = Σ_i r_i(y) x_i, the flow-matching target of the training set.
"""
from __future__ import annotations

import torch

from gsm.checks import choice
from gsm.scores.base import ScoreModel
from gsm.scores.nets import PREDICTS

CHUNK_ENTRIES = 2 ** 24     # y points × training points per block of the (R, B, N) distances: ~130 MB in float64


class EmpiricalScore(ScoreModel):
    """s_l(y) = ∇ log p̂_{α_l, s_l}(y) of each replicate's own training set (module doc), set by `fit(x)`.

    Args:
        alphas, noise_stds: (L,) the sampler's levels y = α_l x + s_l z (every s_l > 0).
        replicates: R (taken from the training sets; named so that the pipeline builds one batched model)."""

    linear = False
    requires_training = False
    from_data = True      # set from the training samples (`fit`), not trained

    def __init__(self, alphas: torch.Tensor, noise_stds: torch.Tensor, replicates: int = 1, predicts: str = "score"):
        super().__init__()
        self.predicts = choice("predicts", predicts, PREDICTS)
        stds = torch.as_tensor(noise_stds, dtype=torch.float64, device="cpu")
        if not bool((stds > 0).all()):
            fix = (" (sampler=flow reads t = 1, where s = 0, with heun and rk4 on the linear path: sampler.scheme="
                   "euler | midpoint, or sampler.path=vp)" if self.predicts == "velocity" else "")
            raise ValueError(f"model=empirical needs noise levels s_l > 0 (a smoothed training set), got min "
                             f"{float(stds.min())}{fix}")
        self.levels = [(float(a), float(s)) for a, s in zip(alphas.tolist(), stds.tolist())]
        self.data = None

    def fit(self, x: torch.Tensor) -> None:
        """The training sets x (R, N, d), kept in float64."""
        self.data = x.detach().to(torch.float64)

    def forward(self, y: torch.Tensor, level: int = 0) -> torch.Tensor:
        """y (R, B, d) in any dtype → s_l(y) (or w_l(y)) (R, B, d) in y's dtype, in blocks of B (memory: R·B·N
        distances). With m = E[x₁ | y] = Σ_i r_i(y) x_i: s = (αm − y)/s², w = m − (y − αm)/s."""
        alpha, std = self.levels[int(level)]
        step = max(1, CHUNK_ENTRIES // (self.data.shape[0] * self.data.shape[1]))
        out = []
        for yb in y.to(torch.float64).split(step, dim=-2):
            logits = -0.5 * torch.cdist(yb, alpha * self.data).pow(2) / std ** 2     # (R, b, N)
            m = torch.softmax(logits, -1) @ self.data                                 # E[x₁ | y]
            out.append(m - (yb - alpha * m) / std if self.predicts == "velocity" else (alpha * m - yb) / std ** 2)
        return torch.cat(out, -2).to(y.dtype)
