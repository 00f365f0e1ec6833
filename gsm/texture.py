"""Stationary Gaussian textures (ADSN) and linear scores diagonal in the 2-D Fourier basis.

Target (asymptotic discrete spot noise, Galerne et al.). An n×n grayscale image u (values in
[0, 1], mean removed), d = n² pixels, periodic boundary. ADSN is X = (1/n) u ⊛ W, W white noise:
a centred Gaussian whose covariance is the circulant matrix of eigenvalues

    λ(ω) = |û(ω)|² / n²,   û = fft2(u) (unnormalised DFT),   Σ_ω λ(ω) = ‖u‖² (Parseval),

so tr Σ / d is the image's pixel variance. The mean-removed image has λ(0) = 0 (and other λ can be
tiny): λ is floored at `floor · mean(λ)`, which keeps Σ invertible and every kernel finite.

Frequencies live on the rfft2 half-plane (n, n//2+1). Real signals have û(−ω) = conj û(ω): a
half-plane entry stands for `multiplicity` (1 or 2) full-grid frequencies, and the *real*
frequencies (ω ≡ −ω: DC and Nyquist, `is_real_frequency`) carry real Fourier coefficients.

Model. s(y) = −A y with A a real *symmetric* circulant: A = F* diag(a) F (F the unitary DFT),
a(ω) = a(−ω) real, i.e. s(y) = −irfft2(a · rfft2(y)), a circular convolution. The state is
a: (R, L, n, n//2+1) (replicates, noise levels, half-plane). We do not allow non-symmetric
circulants (complex a): the DSM optimum 1/(α²P̂ + s²) is real and even.

Training: the same DSM-SGD as `gsm.train.train_linear_dsm` (convention (L)), with the gradient
projected on symmetric circulants, ĝ(ω) = Re(û(ω) conj ŷ(ω))/d (u = s² A y − s z): O(d log d)
per sample. Sampling (Langevin, DDPM, DDIM) runs per frequency, x̂ ← f(a) x̂ + √q ξ̂.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from gsm.metrics import bures_wasserstein2_commuting

BUNDLED = ("brick", "grass", "gravel", "camera")
FITS = ("crop", "resize")
_F64 = torch.float64


# ------------------------------------------------------------------------------------------ data

def load_texture(image: str, size: int, fit: str = "crop") -> torch.Tensor:
    """The source image u: grayscale in [0, 1], n×n, mean removed. (n, n) float64.

    image: one of brick | grass | gravel | camera (scikit-image's bundled images) or a PNG path.
    fit: "crop" (centre n×n crop; the image must be at least n×n) or "resize" (centre square
    crop, then anti-aliased resize to n×n: changes the texture's scale).
    """
    if int(size) != size or size < 2:
        raise ValueError(f"data.size must be an integer >= 2, got {size}")
    if fit not in FITS:
        raise ValueError(f"data.fit must be one of {' | '.join(FITS)}, got {fit}")
    try:
        import skimage.data
        from skimage import color, io, transform, util
    except ImportError as e:  # pragma: no cover
        raise ImportError("data=texture needs scikit-image: pip install 'gsm[texture]'") from e
    if image not in BUNDLED and not (Path(str(image)).suffix.lower() == ".png" and Path(str(image)).is_file()):
        raise ValueError(f"data.image must be one of {' | '.join(BUNDLED)} or an existing .png file, got {image}")
    try:      # an undecodable or unreadable file: PIL, imageio and the OS raise their own error types
        img = getattr(skimage.data, image)() if image in BUNDLED else io.imread(str(image))
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"data.image must be a readable image ({type(e).__name__}: {reason}), got {image}") from None
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3]) if img.shape[-1] >= 3 else img[..., 0]
    img = util.img_as_float64(img)
    n, (H, W) = int(size), img.shape
    if fit == "crop":
        if min(H, W) < n:
            raise ValueError(f"data.size must be <= the image's smaller side {min(H, W)} with data.fit=crop, "
                             f"got {n} (use data.fit=resize)")
        img = img[(H - n) // 2:(H - n) // 2 + n, (W - n) // 2:(W - n) // 2 + n]
    else:
        s = min(H, W)
        img = transform.resize(img[(H - s) // 2:(H - s) // 2 + s, (W - s) // 2:(W - s) // 2 + s], (n, n),
                               anti_aliasing=True)
    u = torch.as_tensor(img, dtype=_F64)
    return u - u.mean()


def adsn_spectrum(u: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """λ(ω) = max(|û(ω)|²/n², floor · mean λ) on the rfft2 half-plane: (n, n) → (n, n//2+1) float64.
    mean λ = Σ_ω λ / d is the pixel variance of u."""
    if not floor > 0:
        raise ValueError(f"data.floor must be > 0 (λ(0) = 0 for the mean-removed image), got {floor}")
    u = u.to(_F64)
    lam = torch.fft.rfft2(u).abs() ** 2 / u.numel()
    mean = float((multiplicity(u.shape[-1], u.device) * lam).sum()) / u.numel()
    if not mean > 0:
        raise ValueError("data.image is constant on the crop: the ADSN covariance is 0")
    return lam.clamp_min(floor * mean)


def multiplicity(n: int, device=None) -> torch.Tensor:
    """w(ω) ∈ {1, 2}: how many full-grid frequencies (ω, −ω) a half-plane entry stands for, so that
    Σ_{full grid} f = Σ_{half} w f for even f. (n, n//2+1) float64."""
    k2 = torch.arange(n // 2 + 1, device=device)
    w = torch.where((k2 == 0) | (2 * k2 == n), 1.0, 2.0).to(_F64)
    return w.expand(n, -1).clone()


def is_real_frequency(n: int, device=None) -> torch.Tensor:
    """ω ≡ −ω (mod n) in both coordinates (DC, Nyquist): û(ω) is real there. (n, n//2+1) bool."""
    k1 = torch.arange(n, device=device).view(-1, 1)
    k2 = torch.arange(n // 2 + 1, device=device).view(1, -1)
    return ((2 * k1) % n == 0) & ((2 * k2) % n == 0)


def kappa(n: int, device=None) -> torch.Tensor:
    """κ(ω) = 2 at real frequencies, 1 elsewhere: Var(|x̂(ω)|²/d) = κ λ² for x̂ the DFT of an ADSN
    sample (exponential law at a complex frequency, λχ²₁ at a real one). (n, n//2+1) float64."""
    return 1.0 + is_real_frequency(n, device).to(_F64)


def adsn_sample(lam: torch.Tensor, shape, generator=None, dtype=_F64, device=None) -> torch.Tensor:
    """x = irfft2(√λ · rfft2(w)), w white noise: samples of N(0, Σ). lam (n, n//2+1) → (*shape, n, n)."""
    n = lam.shape[-2]
    w = torch.randn(*shape, n, n, generator=generator, dtype=dtype, device=device)
    return torch.fft.irfft2(lam.to(device, dtype).sqrt() * torch.fft.rfft2(w), s=(n, n))


def periodogram(x: torch.Tensor) -> torch.Tensor:
    """Per-frequency second moment (1/M) Σ_m |x̂_m(ω)|²/d over dim −3, float64: the circulant
    projection of (1/M) Σ x xᵀ. (..., M, n, n) → (..., n, n//2+1)."""
    x = x.to(_F64)
    return (torch.fft.rfft2(x).abs() ** 2).mean(-3) / (x.shape[-1] * x.shape[-2])


def fourier_bures_wasserstein2(lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """B²(Σ, C) for circulant Σ, C with half-plane eigenvalues λ, c (..., n, n//2+1): the commuting
    formula Σ_ω (√λ(ω) − √c(ω))² over the full grid (exact). → (...)."""
    w = multiplicity(lam.shape[-2], lam.device)
    return bures_wasserstein2_commuting((w * lam).flatten(-2), (w * c).flatten(-2))  # w(√λ−√c)² = (√wλ−√wc)²


# ----------------------------------------------------------------------------------------- model

def apply_circulant(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A y for the symmetric circulant A of eigenvalues a (…, n, n//2+1): irfft2(a · rfft2(y))."""
    n = y.shape[-1]
    return torch.fft.irfft2(a.to(y.dtype) * torch.fft.rfft2(y), s=(y.shape[-2], n))


class FourierLinearScore(nn.Module):
    """s(y, l) = −A_l y, A_l a symmetric circulant (a circular convolution) of eigenvalues a_l(ω).

    Args:
        size: n (the texture is n×n; d = n²).  replicates: R.  levels: L noise levels.
        init: a₀ = 0 ("zeros"), 1 ("identity") or 1/s_l² ("noise": the DSM optimum where the data
            have no power, so the many frequencies with λ ≪ s² start next to their optimum).
        oracle: no training, a_l = 1/(α_l² λ + s_l²), the exact score of the noised target.
        stds: s_l (L,), needed by init="noise".
    The state `a` is (R, L, n, n//2+1) on the rfft2 half-plane (a(−ω) = a(ω)).
    """

    symmetric = True

    def __init__(self, size: int | None = None, replicates: int = 1, levels: int = 1, init: str = "zeros",
                 oracle: bool = False, stds: torch.Tensor | None = None, dim: int | None = None):
        super().__init__()
        if size is None:
            raise ValueError(f"model=fourier_linear needs data=texture (an n×n stationary target), got a "
                             f"d-dimensional target (data.dim={dim})")
        n = int(size)
        self.init = init
        self.a = nn.Parameter(torch.zeros(replicates, levels, n, n // 2 + 1), requires_grad=False)
        self.a.data += initial_coefficients(init, levels, stds).view(-1, 1, 1).to(self.a.dtype)
        self.requires_training = not oracle

    @property
    def size(self) -> int:
        return self.a.shape[-2]

    def forward(self, y: torch.Tensor, level: int = 0) -> torch.Tensor:
        """Score at level l: y (R, M, n, n) → −A_l y (R, M, n, n)."""
        return -apply_circulant(self.a[:, level].unsqueeze(1), y)

    def coefficients(self) -> torch.Tensor:
        """a as float64, (R, L, n, n//2+1)."""
        return self.a.detach().to(_F64)

    def matrices(self) -> torch.Tensor:
        """The full-matrix A (R, L, d, d) (small n only: tests, comparisons with gsm.models.LinearScore)."""
        return circulant_matrices(self.coefficients())

    @torch.no_grad()
    def set_coefficients(self, a: torch.Tensor) -> None:
        self.a.copy_(a.to(self.a.dtype).expand_as(self.a))

    def exact_variances(self, sampler) -> torch.Tensor:
        """Per-frequency variance of the sampler's output given a: (R, n, n//2+1) float64."""
        return sampler_variance(sampler, self.coefficients())


def initial_coefficients(init: str, levels: int, stds=None) -> torch.Tensor:
    """a₀ per level (L,) float64 for init = zeros | identity | noise (1/s_l²)."""
    if init == "zeros":
        return torch.zeros(levels, dtype=_F64)
    if init == "identity":
        return torch.ones(levels, dtype=_F64)
    if init == "noise":
        if stds is None or len(stds) != levels:
            raise ValueError(f"model.init=noise needs the {levels} noise levels s_l (stds), got {stds}")
        return 1.0 / torch.as_tensor(stds, dtype=_F64) ** 2
    raise ValueError(f"model.init must be one of zeros | identity | noise, got {init}")


def circulant_matrices(a: torch.Tensor) -> torch.Tensor:
    """The d×d matrices of the circulants with eigenvalues a (…, n, n//2+1), by applying them to the
    pixel basis (row-major flattening, as (…, n, n).reshape(…, d)). → (…, d, d) float64."""
    n = a.shape[-2]
    d = n * n
    eye = torch.eye(d, dtype=_F64, device=a.device).view(d, n, n)
    cols = apply_circulant(a.to(_F64).unsqueeze(-3), eye)        # (…, d, n, n): column j = A e_j
    return cols.flatten(-2).transpose(-1, -2)


def dsm_optimum_fourier(power: torch.Tensor, alphas: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """a_l(ω) = 1/(α_l² P(ω) + s_l²): the DSM minimiser of the Fourier model for the per-frequency
    second moment P (λ: exact score; the periodogram P̂ of the data: empirical optimum).
    (..., n, h), (L,) → (..., L, n, h) float64."""
    P = power.to(_F64).unsqueeze(-3)
    return 1.0 / (alphas.to(P.device, _F64).pow(2).view(-1, 1, 1) * P + stds.to(P.device, _F64).pow(2).view(-1, 1, 1))


# ------------------------------------------------------------------------------------- training

@torch.no_grad()
def train_fourier_dsm(a: torch.Tensor, xhat: torch.Tensor, *, alphas, stds, tau: float, batch_size: int = 1,
                      steps: int, generator=None, log_every: int = 0, callback=None, chunk: int = 256) -> dict:
    """DSM-SGD on the Fourier-diagonal score, in place on a, for R replicates (convention (L)).

    Per sample (level l, y = α_l x + s_l z): u = s² A y − s z and the symmetric-circulant projection of
    the full-matrix gradient u yᵀ, ĝ(ω) = Re(û(ω) conj ŷ(ω))/d; a ← a − (τ/b) Σ_batch ĝ. The random
    draws (indices, pixel noise z, levels) are those of `gsm.train.train_linear_dsm`, in the same order.

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


# -------------------------------------------------------------------------------------- samplers

def _is_chain(sampler) -> bool:
    return hasattr(sampler, "chain")      # gsm.diffusion.DDPM / DDIM


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
        from gsm.diffusion import ddpm_variance
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


# ---------------------------------------------------------------------------------------- theory

def bures_diagonal_weights(lam: torch.Tensor, c: torch.Tensor):
    """ρ = 1 − √(λ/c) and W = W(λ,λ) = √λ/(2c^{3/2}) of the theory note §4 on the diagonal:
    (√λ − √(c+e))² = (√λ − √c)² + ρ e + ½ W e² + O(e³)."""
    return 1 - (lam / c).sqrt(), lam.sqrt() / (2 * c ** 1.5)


def _derivatives(f, x: torch.Tensor, chunk: int = 1 << 14):
    """f(x), f'(x), f''(x) of an elementwise map f: (F,) → (F,) (each output entry depends on its own
    input entry only), by reverse-mode AD of Σf and Σf' (chunked over the entries)."""
    outs = []
    for xs in x.split(chunk):
        with torch.enable_grad():
            xs = xs.detach().clone().requires_grad_(True)
            v = f(xs)
            g, = torch.autograd.grad(v.sum(), xs, create_graph=True)
            h, = torch.autograd.grad(g.sum(), xs)
        outs.append((v.detach(), g.detach(), h))
    return tuple(torch.cat(t) for t in zip(*outs))


def sgd_variance_fourier(lam, alphas, stds, *, batch_size: int = 1, exact_tau: float | None = None):
    """Stationary variance per unit τ of Δ = a − a* at each level and frequency, first order in τ:

        Var(Δ_l(ω)) = τ κ(ω) α_l²λ / (4b(α_l²λ + s_l²)),

    half the full-matrix diagonal v (note §2.2) at a complex frequency (κ = 1), equal at a real one
    (κ = 2). exact_tau (L = 1 only): the exact variance for online Gaussian data, per unit τ,
    κU/(2bs²(2 − τs²m(1 + κ/b))), U = s²λ/m, m = λ + s² (each frequency is a scalar recursion).
    lam (n, h), alphas/stds (L,) → (L, n, h)."""
    k = kappa(lam.shape[-2], lam.device)
    a2 = alphas.to(_F64).pow(2).view(-1, 1, 1)
    s2 = stds.to(_F64).pow(2).view(-1, 1, 1)
    m = a2 * lam + s2
    b = float(batch_size)
    if exact_tau is None:
        return k * a2 * lam / (4 * b * m)
    if alphas.numel() != 1:
        raise ValueError(f"exact_tau needs a single noise level, got {alphas.numel()} levels")
    U = s2 * a2 * lam / m
    return k * U / (2 * b * s2 * (2 - exact_tau * s2 * m * (1 + k / b)))


def _chain_tau_cells(sampler, lam, a_opt, var, rho, W, chunk: int = 1 << 22):
    """Σ_k V_k [½ρ ∂²v/∂a_k² + ½W (∂v/∂a_k)²] for a DDPM/DDIM chain: with ℓ_k the product of the later
    maps, c_k the variance at t_k and f_k = c_k − g_k a_k, ∂v/∂a_k = −2g_kℓ_k²f_kc_k and
    ∂²v/∂a_k² = 2g_k²ℓ_k²c_k (the diagonal of gsm.diffusion.ddpm_tau_kernel). Chunked over ω."""
    ch = sampler.chain
    A, V = _grid(sampler, a_opt), _grid(sampler, var)            # (K+1, F)
    F = A.shape[-1]
    out = torch.empty(F, dtype=_F64)
    step = max(1, chunk // (ch.K + 1))
    for s in range(0, F, step):
        a, v = A[:, s:s + step], V[:, s:s + step]
        f = ch.c.view(-1, 1) - ch.g.view(-1, 1) * a
        c = torch.empty_like(a)
        x = torch.full_like(a[0], float(sampler.init_var))
        for k in range(ch.K, -1, -1):
            c[k] = x
            x = f[k] ** 2 * x + ch.q[k]
        ell2 = torch.cumprod(torch.cat([torch.ones_like(f[:1]), f[:-1]]), 0) ** 2
        g2 = ch.g.view(-1, 1) ** 2
        out[s:s + step] = (v * g2 * ell2 * (rho[s:s + step] * c + 2 * W[s:s + step] * ell2 * f ** 2 * c ** 2)).sum(0)
    return out


def fourier_prediction(lam: torch.Tensor, sampler, *, n=None, sigma=None, tau: float = 0.0, batch_size: int = 1,
                       particles=None, sgd_steps: int | None = None, init: str = "zeros") -> dict:
    """Predicted E[W2²(N(0,Σ), law of the sampler output)] for the Fourier-diagonal model (README,
    "Textures"). Per frequency ω (full grid; half-plane entries weighted by their multiplicity):

        E[W2²] = Σ_ω (√λ − √h(λ))²
               + (1/N) Σ_ω κ λ² [½ W h'(λ)² + ½ ρ h''(λ)]                  (periodogram: Var P̂ = κλ²/N)
               + τ Σ_ω Σ_l V_l [½ W (∂v/∂a_l)² + ½ ρ ∂²v/∂a_l²]           (V_l: `sgd_variance_fourier`)
               + (1/M) Σ_ω ½ κ W h²                                        (particle periodogram)

    h(λ) = v(a*(λ)) the output variance with the exact score a*_l = 1/(α_l²λ + s_l²), v the sampler's
    per-frequency map, ρ = 1 − √(λ/h), W = √λ/(2h^{3/2}). Each kernel is (κ/2) × the diagonal
    K(λ_ω, λ_ω) of the full-matrix kernel of gsm.theory / gsm.diffusion: the off-diagonal
    fluctuations (Wishart, SGD) are absent, and a complex frequency's periodogram or SGD noise has
    half the variance of a full-matrix diagonal entry (ω and −ω are one real parameter).
    lam: (n, n//2+1). σ: Langevin's DSM noise level (the levels of a diffusion sampler are its own).

    sgd_steps = k (with tau > 0): SGD ran k steps from a₀ (`init`), not to stationarity. Each level is
    hit by a fraction 1/L of the samples, so E[a_k] = a* + (a₀ − a*) r^k, r = 1 − τs²m/L (m = α²λ + s²,
    population second moment), whose exact effect is the term "transient"; the τ term uses
    Var(Δ_k) = τV(1 − r^{2k}) (first order; the multiplicative noise of the mean offset is neglected).
    """
    lam = lam.to(_F64)
    nn_ = lam.shape[-2]
    w, k = multiplicity(nn_), kappa(nn_)
    alphas, stds = sampler.noise_levels(sigma)
    flat = lam.flatten()
    a_opt = dsm_optimum_fourier(lam, alphas, stds).flatten(-2)     # (L, F)
    h_fn = lambda x: sampler_variance(sampler, dsm_optimum_fourier(x.view(1, -1), alphas, stds)).flatten()
    h, h1, h2 = _derivatives(h_fn, flat)
    rho, W = bures_diagonal_weights(flat, h)
    kf, wf = k.flatten(), w.flatten()
    out = {"bias": float((wf * (flat.sqrt() - h.sqrt()) ** 2).sum())}
    K_N = kf * flat ** 2 * (0.5 * W * h1 ** 2 + 0.5 * rho * h2)
    V = sgd_variance_fourier(lam, alphas, stds, batch_size=batch_size).flatten(-2)     # (L, F)
    m = alphas.to(_F64).pow(2).view(-1, 1) * flat + stds.to(_F64).pow(2).view(-1, 1)   # (L, F)
    out["transient"] = 0.0
    if tau and sgd_steps is not None:
        r = 1 - tau * stds.to(_F64).pow(2).view(-1, 1) * m / alphas.numel()
        a_mean = a_opt + (initial_coefficients(init, alphas.numel(), stds).view(-1, 1) - a_opt) * r ** int(sgd_steps)
        c_mean = sampler_variance(sampler, a_mean.view(-1, 1, flat.numel())).flatten()
        out["transient"] = float((wf * ((flat.sqrt() - c_mean.sqrt()) ** 2 - (flat.sqrt() - h.sqrt()) ** 2)).sum())
        V = V * (1 - r ** (2 * int(sgd_steps)))
    if _is_chain(sampler):
        K_tau = _chain_tau_cells(sampler, flat, a_opt, V, rho, W)
    else:
        _, c1, c2 = _derivatives(lambda x: sampler_variance(sampler, x.view(1, 1, -1)).flatten(), a_opt[0])
        K_tau = V[0] * (0.5 * W * c1 ** 2 + 0.5 * rho * c2)
    K_M = 0.5 * kf * W * h ** 2
    out["generalization"] = float((wf * K_N).sum()) / n if n else 0.0
    out["optimization"] = float(tau * (wf * K_tau).sum()) if tau else 0.0
    out["particles"] = float((wf * K_M).sum()) / particles if particles else 0.0
    out["total"] = out["bias"] + out["transient"] + out["generalization"] + out["optimization"] + out["particles"]
    out["eps_tau"] = float(tau * (kf * alphas.to(_F64).pow(2).view(-1, 1) * flat * m).max() / (4 * batch_size))
    out["warnings"] = []
    if tau and out["eps_tau"] > 0.005:
        out["warnings"].append(f"eps_tau = {out['eps_tau']:.3g} > 0.005: the first-order τ term may be off "
                               f"by more than ~5% (theory note §5.5)")
    shape = lam.shape
    out.update(kernel_n=K_N.view(shape), kernel_tau=K_tau.view(shape), kernel_m=K_M.view(shape),
               output_variance=h.view(shape), eigenvalues=lam)
    return out
