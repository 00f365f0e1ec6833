"""User score models for the status tests (model=custom model._target_=user_models.<Class>)."""
import os

import torch

from gsm.scores.linear import LinearScore


class RaisingScore(torch.nn.Module):
    """A user model whose forward pass raises, as a buggy user model does."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(dim))

    def forward(self, y, t=None):
        raise RuntimeError("user model exploded\nat its second line")


class FaultOnSeed(LinearScore):
    """The linear score, except in the job whose seed is $GSM_FAULT_SEED: there it raises once trained, as a
    user model with a bug does (tools/fault_injection.py). The job's seed is read at construction, where
    gsm.scores.nets.build_score_model has seeded torch's global RNG with it."""

    def __init__(self, dim: int, replicates: int = 1, levels: int = 1, init: str = "zeros", symmetric: bool = False):
        super().__init__(dim, replicates=replicates, levels=levels, init=init, symmetric=symmetric)
        self.faulty = torch.initial_seed() == int(os.environ.get("GSM_FAULT_SEED", "-1"))

    def matrices(self):
        if self.faulty:
            raise ValueError(f"injected fault in the user model (seed {os.environ['GSM_FAULT_SEED']})")
        return super().matrices()
