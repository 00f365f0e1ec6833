"""Real data as a finite pool of samples (data.kind=dataset): scikit-learn's 8×8 handwritten digits
(`data=digits`, 1797 images) and 8×8 patches of a scikit-image sample image (`data=patches`), d = 64. Both
ship with their packages: nothing is downloaded at run time.

Normalisation, the same for both: pixel values u ∈ [0, 1] (digits: grey level / 16; images: / 255),
dequantised once (u + v/q, v ~ U[0, 1) from a fixed seed, q the number of grey levels less one: the pool's
grey levels are integers, and the digits' three always-blank corner pixels would otherwise give Σ three zero
eigenvalues), then centred and scaled to unit average variance,

    x_i = (u_i − ū) / c,  c² = tr Σ_u / d,  so that mean_i x_i = 0 and tr Σ / d = 1, Σ = (1/P) Σ_i x_i x_iᵀ.

The pool's Gaussian surrogate is N(0, Σ): every linear path of gsm (which models N(0, Σ)) runs on it. A run
draws each replicate's N training samples without replacement from the P pool samples (`SamplePool.split`);
its fresh target samples come from that replicate's held-out rest (`PoolSplit.fresh`). There is no exact score.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gsm.checks import choice, number
from gsm.data.gaussian import Gaussian

DEQUANTIZE_SEED = 0         # the pool is one fixed set of points, whatever the run's seed
PATCH_IMAGES = ("camera", "coins", "moon", "text", "brick", "grass", "gravel")
MIN_HELD_OUT = 4            # two fresh target samples of two points each: the least a W2 floor needs


class SamplePool:
    """P samples x_i (P, d) float64 with mean 0 (module doc), and what the pipeline reads of them.

    Args: points (P, d), centred.  description: what they are, for the console's data line."""

    def __init__(self, points: torch.Tensor, description: str):
        self.points = torch.as_tensor(points, dtype=torch.float64)
        self.description = description
        self.is_gaussian = False

    @property
    def size(self) -> int:
        return self.points.shape[0]

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    @property
    def covariance(self) -> torch.Tensor:
        """Σ = (1/P) Σ_i x_i x_iᵀ (the pool is centred), (d, d) float64."""
        return self.points.T @ self.points / self.size

    def surrogate(self) -> Gaussian:
        """N(0, Σ), Σ = U diag(λ) Uᵀ by eigh."""
        return Gaussian.from_covariance(self.covariance)

    def check_n(self, n) -> int:
        """data.n: N in [2, P − 4] (the rest is held out for fresh target samples)."""
        return number("data.n", n, 2, self.size - MIN_HELD_OUT, integer=True,
                      why=f"{self.description}: {self.size} samples, {MIN_HELD_OUT} of them held out at least")

    def split(self, replicates: int, n: int, generator=None, device=None) -> PoolSplit:
        """Each replicate's N training samples, drawn without replacement, and its held-out rest."""
        self.check_n(n)
        order = torch.rand(replicates, self.size, generator=generator, device=device).argsort(-1)
        return PoolSplit(self.points.to(device or "cpu"), order[:, :n], order[:, n:])


@dataclass(frozen=True)
class PoolSplit:
    """Per replicate r, the pool's indices of its training samples `train_index` (R, N) and of the held-out rest
    `held_index` (R, P − N)."""

    points: torch.Tensor
    train_index: torch.Tensor
    held_index: torch.Tensor

    @property
    def train(self) -> torch.Tensor:
        """The training sets (R, N, d) float64."""
        return self.points[self.train_index]

    @property
    def held_out(self) -> int:
        return self.held_index.shape[1]

    def select(self, keep: torch.Tensor) -> PoolSplit:
        """The replicates where `keep` (R,) bool is true."""
        return PoolSplit(self.points, self.train_index[keep], self.held_index[keep])

    def fresh(self, count: int, parts: int = 1, generator=None) -> torch.Tensor:
        """`parts` disjoint fresh samples of m = min(count, held-out // parts) held-out points per replicate,
        drawn without replacement: (parts, R, m, d) float64."""
        m = min(int(count), self.held_out // parts)
        R = self.held_index.shape[0]
        order = torch.rand(R, self.held_out, generator=generator, device=self.held_index.device).argsort(-1)
        idx = torch.gather(self.held_index, 1, order[:, :parts * m]).view(R, parts, m).transpose(0, 1)
        return self.points[idx]


def normalised(u: torch.Tensor, levels: int, dequantize: bool, description: str) -> SamplePool:
    """The pool of the grey levels u (P, d) ∈ [0, 1], on `levels` + 1 grey levels (module doc)."""
    u = torch.as_tensor(u, dtype=torch.float64)
    if choice("data.dequantize", dequantize, (True, False)):
        u = u + torch.rand(u.shape, generator=torch.Generator().manual_seed(DEQUANTIZE_SEED),
                           dtype=torch.float64) / levels
    x = u - u.mean(0)
    return SamplePool(x / x.pow(2).mean(0).sum().div(x.shape[1]).sqrt(), description)


def load_digits(dequantize: bool = True) -> SamplePool:
    """scikit-learn's bundled 8×8 handwritten digits (`sklearn.datasets.load_digits`, 1797 images, grey levels
    0..16): d = 64."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ValueError("data=digits needs scikit-learn (pip install 'gsm[digits]'), got no module named "
                         "sklearn") from None
    images = torch.as_tensor(sklearn_digits().data, dtype=torch.float64)
    return normalised(images / 16, 16, dequantize, f"scikit-learn's 8×8 handwritten digits ({len(images)} images)")


def load_patches(image: str = "camera", size: int = 8, stride: int = 8, dequantize: bool = True) -> SamplePool:
    """The size×size patches, `stride` pixels apart, of a scikit-image sample image (grey, 256 levels):
    d = size². stride = size (default): the patches share no pixel, so held-out patches are new pixels."""
    choice("data.image", image, PATCH_IMAGES)
    size = number("data.size", size, 2, integer=True)
    stride = number("data.stride", stride, 1, integer=True)
    try:
        import skimage.data
        from skimage import color, util
    except ImportError:
        raise ValueError("data=patches needs scikit-image (pip install 'gsm[texture]'), got no module named "
                         "skimage") from None
    img = getattr(skimage.data, image)()
    img = torch.as_tensor(util.img_as_float64(color.rgb2gray(img[..., :3]) if img.ndim == 3 else img))
    patches = img.unfold(0, size, stride).unfold(1, size, stride).reshape(-1, size * size)
    return normalised(patches, 255, dequantize,
                      f"{size}×{size} patches of scikit-image's {image} ({len(patches)} patches, stride {stride})")
