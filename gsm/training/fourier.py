"""DSM-SGD for Fourier-diagonal linear scores (data.kind=texture): the trainer of
`gsm.training.dsm.train_linear_dsm` (convention (L)) with the gradient projected on symmetric
circulants, ĝ(ω) = Re(û(ω) conj ŷ(ω))/d, u = s² A y − s z: O(d log d) per sample, the state
a (R, L, n, n//2+1) on the rfft2 half-plane (docs/textures.md, docs/theory.md §13)."""
from __future__ import annotations

import torch

from gsm.data.texture import multiplicity

_F64 = torch.float64


# ------------------------------------------------------------------------------------- training

class _FourierSGD:
    """The state of `train_fourier_dsm`: the coefficients a (updated in place), the data ŷ's ingredients, the
    levels, the loss log and the divergence record."""

    def __init__(self, a, xhat, alphas, stds, tau: float, b: int, callback, log_every: int):
        R, self.L, n, h = a.shape
        self.a, self.tau, self.b, self.d = a, tau, b, n * n
        dev, dt = a.device, a.dtype
        self.xhat = xhat.to(torch.complex128 if dt == _F64 else torch.complex64)
        self.al, self.sl = alphas.to(dev, dt), stds.to(dev, dt)
        self.rows = torch.arange(R, device=dev).view(R, 1).expand(R, b)
        self.w = multiplicity(n, dev).to(dt)
        self.flat = a.view(R * self.L, n, h)
        self.diverged_at = torch.full((R,), -1, dtype=torch.long, device=dev)
        self.callback, self.log_every = callback, log_every

    def due(self, k: int):
        """Whether step k is logged."""
        return self.callback is not None and self.log_every and k % self.log_every == 0

    def log(self, k: int, u, s):
        """callback(k, ℓ) with ℓ = ½‖u‖²/s² (Parseval on the half-plane) averaged over the batch and the live
        replicates; u: (R, b, n, h), s: scalar or (R, b)."""
        alive = self.diverged_at < 0
        if self.due(k) and alive.any():
            dev, dt = self.a.device, self.a.dtype
            s2 = torch.as_tensor(s, dtype=dt, device=dev).reshape(-1, self.b if self.L > 1 else 1) ** 2
            loss = 0.5 * (self.w * u.abs() ** 2).sum((-1, -2)) / (self.d * s2)
            self.callback(k, float(loss.mean(1)[alive].mean()))

    def one_level(self, step: int, idx, zh):
        """The chunk's steps after `step` at one level. Per frequency g = Re(û conj ŷ) = s²a|ŷ|² − s Re(ẑ conj ŷ),
        so each step is the scalar affine map a ← p_k a + q_k. Its coefficients are built for the whole chunk at
        once; the loop is one fused multiply-add per step (the same arithmetic, without its temporaries)."""
        s0, alpha, bd = float(self.sl[0]), float(self.al[0]), self.b * self.d
        y = alpha * self.xhat[self.rows, idx.transpose(0, 1)] + s0 * zh     # ŷ (c, R, b, n, h)
        p = 1 - (self.tau * s0 ** 2 / bd) * (y.real ** 2 + y.imag ** 2).sum(2)    # (c, R, n, h)
        q = (self.tau * s0 / bd) * (zh.real * y.real + zh.imag * y.imag).sum(2)
        for k in range(zh.shape[0]):
            if self.due(step + k + 1):
                self.log(step + k + 1, (s0 ** 2 * self.a[:, :1]) * y[k] - s0 * zh[k], s0)    # û at the current a
            self.a[:, 0].mul_(p[k]).add_(q[k])

    def per_sample_levels(self, step: int, idx, zh, lv):
        """The chunk's steps after `step` with a level per sample: gather a_l, scatter-add the gradient."""
        R, b, rows = self.rows.shape[0], self.b, self.rows
        for k in range(zh.shape[0]):
            l = lv[k]
            s, alpha = self.sl[l].view(R, b, 1, 1), self.al[l].view(R, b, 1, 1)
            y = alpha * self.xhat[rows, idx[:, k]] + s * zh[k]    # ŷ (R, b, n, h)
            u = (s ** 2 * self.a[rows, l]) * y - s * zh[k]        # û
            g = (u * y.conj()).real.reshape(-1, *self.flat.shape[1:])
            self.flat.index_add_(0, (rows * self.L + l).reshape(-1), g, alpha=-self.tau / (b * self.d))
            self.log(step + k + 1, u, s)

    def record_divergence(self, step: int) -> bool:
        """Marks the replicates whose a became non-finite by `step`; True when all have."""
        bad = ~torch.isfinite(self.a).flatten(1).all(1) & (self.diverged_at < 0)
        if bad.any():
            self.diverged_at[bad] = step
            return bool((self.diverged_at >= 0).all())
        return False


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
    R, L, n, _ = a.shape
    N, dev, b = xhat.shape[1], a.device, int(batch_size)
    sgd = _FourierSGD(a, xhat, alphas, stds, tau, b, callback, log_every)
    step = 0
    while step < steps:
        c = min(chunk, steps - step)
        idx = torch.randint(N, (R, c * b), generator=generator, device=dev).view(R, c, b)
        z = torch.randn(c, R, b, n, n, generator=generator, device=dev, dtype=a.dtype)
        lv = torch.randint(L, (c, R, b), generator=generator, device=dev) if L > 1 else None
        zh = torch.fft.rfft2(z)                               # (c, R, b, n, h)
        if lv is None:
            sgd.one_level(step, idx, zh)
        else:
            sgd.per_sample_levels(step, idx, zh, lv)
        step += c
        if sgd.record_divergence(step):
            break
    return {"diverged_at": sgd.diverged_at}
