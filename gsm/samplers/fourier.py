"""Samplers on the Fourier-diagonal case (data.kind=texture): every score matrix is a circulant with
coefficients a (R, L, n, n//2+1) on the rfft2 half-plane, so each frequency runs its own scalar chain
through the sampler's declared diagonal law (`Sampler.diagonal_variance`, `Sampler.diagonal_sample`)."""
from __future__ import annotations

import torch

_F64 = torch.float64


def sampler_variance(sampler, a: torch.Tensor) -> torch.Tensor:
    """Exact output variance per frequency of a sampler driven by the score coefficients a
    (..., L, n, h) → (..., n, h) float64 (per-frequency scalar recursions, `Sampler.diagonal_variance`)."""
    shape = a.shape
    v = sampler.diagonal_variance(a.to(_F64).flatten(-2))
    return v.view(*shape[:-3], *shape[-2:])


def sampler_unstable(sampler, a: torch.Tensor) -> torch.Tensor:
    """Replicates without a finite K-step law: non-finite a, or a law that overflows. A finite a with
    |1 − γa(ω)| ≥ 1 (e.g. untrained, a = 0) still has a finite K-step law: a result. a (R, L, n, h) → (R,) bool."""
    bad = ~torch.isfinite(a).flatten(1).all(1)
    return bad | ~torch.isfinite(sampler_variance(sampler, torch.nan_to_num(a))).flatten(1).all(1)


def fourier_sample(sampler, a: torch.Tensor, x0: torch.Tensor, generator=None) -> torch.Tensor:
    """Runs the sampler in the Fourier domain from x0 (R, M, n, n): per step x̂ ← f x̂ + √q rfft2(ξ),
    ξ drawn in pixel space (so the same generator gives the same noise as the full-matrix samplers
    `linear_langevin_sample` / `linear_reverse_sample`). a: (R, L, n, h). → (R, M, n, n), x0's dtype."""
    n = x0.shape[-1]

    def noise():
        return torch.fft.rfft2(torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype))

    xh = sampler.diagonal_sample(a.to(x0.dtype).unsqueeze(1), torch.fft.rfft2(x0), noise)
    return torch.fft.irfft2(xh, s=(n, n))
