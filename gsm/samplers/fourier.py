"""gsm.samplers.fourier: TODO docstring."""
from __future__ import annotations

import math
import torch

_F64 = torch.float64


# -------------------------------------------------------------------------------------- samplers

def _is_chain(sampler) -> bool:
    return hasattr(sampler, "chain")      # gsm.samplers.ddpm.DDPM / DDIM


def _grid(sampler, a: torch.Tensor) -> torch.Tensor:
    """Level-indexed (..., L, F) → grid-indexed (..., K+1, F), zeros where the chain reads no score."""
    out = a.new_zeros(*a.shape[:-2], sampler.chain.K + 1, a.shape[-1])
    out[..., sampler.chain.levels, :] = a
    return out


def sampler_variance(sampler, a: torch.Tensor) -> torch.Tensor:
    """Exact output variance per frequency of a sampler driven by the score coefficients a
    (..., L, n, h) → (..., n, h) float64 (per-eigenvalue scalar recursions of gsm.theory/gsm.diffusion):
    Langevin c = c_∞ + (1−γa)^{2K}(c₀ − c_∞); DDPM/DDIM v ← (c_k − g_k a_k)² v + q_k."""
    shape = a.shape
    flat = a.to(_F64).flatten(-2)
    if _is_chain(sampler):
        from gsm.samplers.reverse_chain import ddpm_variance
        v = ddpm_variance(_grid(sampler, flat), sampler.chain, sampler.init_var)
    else:
        v = _langevin_k_step_variance(flat[..., 0, :], sampler.gamma, sampler.steps, sampler.init_var)
    return v.view(*shape[:-3], *shape[-2:])


def _langevin_k_step_variance(a, gamma, steps, init_var):
    """c_K = r^K c₀ + 2γ Σ_{k<K} r^k, r = (1 − γa)², as r^K c₀ + 2γ (r^K − 1)/(r − 1): finite for every
    finite a, also at r = 1 (a = 0, an untrained score: c_K = c₀ + 2γK) where c_∞ of the closed form is not."""
    K = int(steps)
    rm1 = gamma * a * (gamma * a - 2)                          # r − 1, without cancellation
    rK = (1 + rm1) ** K
    ratio = torch.expm1(K * torch.log1p(rm1)) / rm1           # (r^K − 1)/(r − 1)
    ratio = torch.where(rm1 == 0, torch.full_like(rm1, float(K)), ratio)
    return rK * init_var + 2 * gamma * ratio


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
    a = a.to(x0.dtype).unsqueeze(1)                           # (R, 1, L, n, h)
    xh = torch.fft.rfft2(x0)
    if _is_chain(sampler):
        ch = sampler.chain
        grid = a.new_zeros(*a.shape[:2], ch.K + 1, *a.shape[-2:])
        grid[:, :, ch.levels] = a
        for k in range(ch.K, -1, -1):
            xh = (float(ch.c[k]) - float(ch.g[k]) * grid[:, :, k]) * xh
            if float(ch.q[k]) > 0:
                xi = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                xh = xh + math.sqrt(float(ch.q[k])) * torch.fft.rfft2(xi)
    else:
        p, c = (1 - sampler.gamma * a[:, :, 0]).to(xh.dtype), math.sqrt(2 * sampler.gamma)   # complex once
        for _ in range(sampler.steps):
            xi = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            xh.mul_(p).add_(torch.fft.rfft2(xi), alpha=c)
    return torch.fft.irfft2(xh, s=(n, n))
