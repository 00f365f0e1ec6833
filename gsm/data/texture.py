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

Training: the same DSM-SGD as `gsm.training.dsm.train_linear_dsm` (convention (L)), with the gradient
projected on symmetric circulants, ĝ(ω) = Re(û(ω) conj ŷ(ω))/d (u = s² A y − s z): O(d log d)
per sample. Sampling (Langevin, DDPM, DDIM) runs per frequency, x̂ ← f(a) x̂ + √q ξ̂.
"""
from __future__ import annotations

from pathlib import Path

import torch

from gsm.checks import choice, number

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
    number("data.size", size, 2, integer=True)
    choice("data.fit", fit, FITS)
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
    floor = number("data.floor", floor, 0, low_open=True, why="λ(0) = 0 for the mean-removed image")
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
