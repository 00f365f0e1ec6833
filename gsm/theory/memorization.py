"""Memorisation: how many generated samples copy a training point (Bonnaire, Urfin, Biroli, Mézard,
arXiv 2505.17638): a sample is memorised when its distances d₁ ≤ d₂ to its two nearest training points
satisfy d₁/d₂ < 1/3."""
from __future__ import annotations

import torch

MEMORIZED_RATIO = 1 / 3       # d₁/d₂ below it: the sample sits on one training point
BOOTSTRAP_DRAWS = 1000


CHUNK_DISTANCES = 1 << 21     # distances held at once (16 MB in float64): the run's memory estimate has no M × N term


def memorized_share(x: torch.Tensor, train: torch.Tensor, ratio: float = MEMORIZED_RATIO) -> torch.Tensor:
    """The share of the samples x (R, M, d) with d₁/d₂ < ratio to their replicate's training set (R, N, d),
    N ≥ 2: (R,) float64. One replicate and a chunk of samples at a time (at most CHUNK_DISTANCES of the M × N
    distances, in float64)."""
    out = []
    for xr, tr in zip(x, train):
        tr, rows = tr.to(torch.float64), max(1, CHUNK_DISTANCES // tr.shape[0])
        hits = 0
        for xc in xr.split(rows):
            d12 = torch.cdist(xc.to(torch.float64), tr).topk(2, dim=-1, largest=False).values   # d₁ ≤ d₂
            hits += int((d12[:, 0] < ratio * d12[:, 1]).sum())
        out.append(torch.tensor(hits / xr.shape[0], dtype=torch.float64))
    return torch.stack(out)


def bootstrap_stderr(values: torch.Tensor, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> float | None:
    """The bootstrap standard error of the mean of `values` (R,): the std of the means of `draws` resamples
    of the R replicates with replacement (fixed seed); None for R < 2."""
    R = values.numel()
    if R < 2:
        return None
    idx = torch.randint(R, (draws, R), generator=torch.Generator().manual_seed(seed))
    return float(values.to(torch.float64)[idx].mean(-1).std(unbiased=True))
