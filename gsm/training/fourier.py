"""gsm.training.fourier: TODO docstring."""
from __future__ import annotations

import torch
from gsm.data.texture import multiplicity

_F64 = torch.float64


# ------------------------------------------------------------------------------------- training

@torch.no_grad()
def train_fourier_dsm(a: torch.Tensor, xhat: torch.Tensor, *, alphas, stds, tau: float, batch_size: int = 1,
                      steps: int, generator=None, log_every: int = 0, callback=None, chunk: int = 256) -> dict:
    """DSM-SGD on the Fourier-diagonal score, in place on a, for R replicates (convention (L)).

    Per sample (level l, y = α_l x + s_l z): u = s² A y − s z and the symmetric-circulant projection of
    the full-matrix gradient u yᵀ, ĝ(ω) = Re(û(ω) conj ŷ(ω))/d; a ← a − (τ/b) Σ_batch ĝ. The random
    draws (indices, pixel noise z, levels) are those of `gsm.training.dsm.train_linear_dsm`, in the same order.

    Args:
        a: (R, L, n, n//2+1), updated in place (its dtype is the training dtype).
        xhat: (R, N, n, n//2+1) complex, rfft2 of the data (one data set per replicate).
    Returns {"diverged_at": (R,) long, −1 if never}.
    """
    R, L, n, h = a.shape
    N, d = xhat.shape[1], n * n
    dev, dt = a.device, a.dtype
    xhat = xhat.to(torch.complex128 if dt == _F64 else torch.complex64)
    al, sl = alphas.to(dev, dt), stds.to(dev, dt)
    b = int(batch_size)
    rows = torch.arange(R, device=dev).view(R, 1).expand(R, b)
    w = multiplicity(n, dev).to(dt)
    flat = a.view(R * L, n, h)
    diverged_at = torch.full((R,), -1, dtype=torch.long, device=dev)
    step = 0

    def log(k, u, s):   # ℓ = ½‖u‖²/s² (Parseval on the half-plane), u: (R, b, n, h), s: scalar or (R, b)
        alive = diverged_at < 0
        if callback is not None and log_every and k % log_every == 0 and alive.any():
            s2 = torch.as_tensor(s, dtype=dt, device=dev).reshape(-1, b if L > 1 else 1) ** 2
            loss = 0.5 * (w * u.abs() ** 2).sum((-1, -2)) / (d * s2)
            callback(k, float(loss.mean(1)[alive].mean()))

    while step < steps:
        c = min(chunk, steps - step)
        idx = torch.randint(N, (R, c * b), generator=generator, device=dev).view(R, c, b)
        z = torch.randn(c, R, b, n, n, generator=generator, device=dev, dtype=dt)
        lv = torch.randint(L, (c, R, b), generator=generator, device=dev) if L > 1 else None
        zh = torch.fft.rfft2(z)                               # (c, R, b, n, h)
        if lv is None:
            # One level: per frequency, g = Re(û conj ŷ) = s²a|ŷ|² − s Re(ẑ conj ŷ), so each step is the
            # scalar affine map a ← p_k a + q_k. Its coefficients are built for the whole chunk at once;
            # the loop is one fused multiply-add per step (the same arithmetic, without its temporaries).
            s0, alpha = float(sl[0]), float(al[0])
            y = alpha * xhat[rows, idx.transpose(0, 1)] + s0 * zh     # ŷ (c, R, b, n, h)
            p = 1 - (tau * s0 ** 2 / (b * d)) * (y.real ** 2 + y.imag ** 2).sum(2)    # (c, R, n, h)
            q = (tau * s0 / (b * d)) * (zh.real * y.real + zh.imag * y.imag).sum(2)
            for k in range(c):
                if callback is not None and log_every and (step + k + 1) % log_every == 0:
                    log(step + k + 1, (s0 ** 2 * a[:, :1]) * y[k] - s0 * zh[k], s0)    # û at the current a
                a[:, 0].mul_(p[k]).add_(q[k])
            step += c
        else:
            for k in range(c):                               # a level per sample: gather, scatter-add
                l = lv[k]
                s, alpha = sl[l].view(R, b, 1, 1), al[l].view(R, b, 1, 1)
                y = alpha * xhat[rows, idx[:, k]] + s * zh[k]    # ŷ (R, b, n, h)
                u = (s ** 2 * a[rows, l]) * y - s * zh[k]        # û
                flat.index_add_(0, (rows * L + l).reshape(-1), (u * y.conj()).real.reshape(-1, n, h),
                                alpha=-tau / (b * d))
                step += 1
                log(step, u, s)
        bad = ~torch.isfinite(a).flatten(1).all(1) & (diverged_at < 0)
        if bad.any():
            diverged_at[bad] = step
            if bool((diverged_at >= 0).all()):
                break
    return {"diverged_at": diverged_at}
