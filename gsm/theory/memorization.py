"""Memorisation: how many generated samples copy a training point (Bonnaire, Urfin, Biroli, Mézard,
arXiv 2505.17638): a sample is memorised when its distances d₁ ≤ d₂ to its two nearest training points
satisfy d₁/d₂ < 1/3."""
from __future__ import annotations

import torch

MEMORIZED_RATIO = 1 / 3       # d₁/d₂ below it: the sample sits on one training point
BOOTSTRAP_DRAWS = 1000


def memorized_share(x: torch.Tensor, train: torch.Tensor, ratio: float = MEMORIZED_RATIO) -> torch.Tensor:
    """The share of the samples x (R, M, d) with d₁/d₂ < ratio to their replicate's training set (R, N, d),
    N ≥ 2: (R,) float64. One replicate at a time (the M × N distances)."""
    out = []
    for xr, tr in zip(x.to(torch.float64), train.to(torch.float64)):
        d12 = torch.cdist(xr, tr).topk(2, dim=-1, largest=False).values                  # (M, 2), d₁ ≤ d₂
        out.append((d12[:, 0] < ratio * d12[:, 1]).to(torch.float64).mean())
    return torch.stack(out)


def bootstrap_stderr(values: torch.Tensor, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> float | None:
    """The bootstrap standard error of the mean of `values` (R,): the std of the means of `draws` resamples
    of the R replicates with replacement (fixed seed); None for R < 2."""
    R = values.numel()
    if R < 2:
        return None
    idx = torch.randint(R, (draws, R), generator=torch.Generator().manual_seed(seed))
    return float(values.to(torch.float64)[idx].mean(-1).std(unbiased=True))
