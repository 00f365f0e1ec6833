"""Target Gaussians N(μ, Σ), Σ = U diag(λ) Uᵀ, built from a power spectrum λ (the eigenvalues of Σ)."""
from __future__ import annotations

from collections.abc import Iterable

import torch

from gsm.checks import choice, number

BASES = ("random", "identity")


def _check_dim(dim: int) -> int:
    return number("data.dim", dim, 1, integer=True)


def _finite_positive(x) -> bool:
    try:
        number("x", x, 0, low_open=True)
    except ValueError:
        return False
    return True


def check_basis(basis: str) -> str:
    """data.basis: random (a Haar U drawn from the seed) | identity."""
    return choice("data.basis", basis, BASES)


def powerlaw_spectrum(dim: int, scale: float = 1.0, exponent: float = 1.0) -> torch.Tensor:
    """λ_i = scale · i^(−exponent), i = 1..d. Shape (d,), float64."""
    dim = _check_dim(dim)
    scale = number("data.spectrum.scale", scale, 0, low_open=True)
    exponent = number("data.spectrum.exponent", exponent)
    i = torch.arange(1, dim + 1, dtype=torch.float64)
    return scale * i ** (-float(exponent))


def isotropic_spectrum(dim: int, value: float = 1.0) -> torch.Tensor:
    """λ_i = value for every i. Shape (d,), float64."""
    dim = _check_dim(dim)
    value = number("data.spectrum.value", value, 0, low_open=True)
    return torch.full((dim,), float(value), dtype=torch.float64)


def two_level_spectrum(dim: int, high: float = 1.0, low: float = 0.1, fraction: float = 0.25) -> torch.Tensor:
    """⌈fraction·d⌉ eigenvalues at `high`, the others at `low` (an ill-conditioned two-scale Σ)."""
    dim = _check_dim(dim)
    fraction = number("data.spectrum.fraction", fraction, 0, 1)
    high = number("data.spectrum.high", high, 0, low_open=True)
    low = number("data.spectrum.low", low, 0, low_open=True)
    k = int(torch.ceil(torch.tensor(fraction * dim)).item())
    lam = torch.full((dim,), float(low), dtype=torch.float64)
    lam[:k] = float(high)
    return lam


def custom_spectrum(eigenvalues, dim: int | None = None) -> torch.Tensor:
    """An explicit list of eigenvalues λ_1..λ_d (all finite and > 0; d = dim when given)."""
    if dim is not None:
        dim = _check_dim(dim)
    listed = isinstance(eigenvalues, Iterable) and not isinstance(eigenvalues, str)
    vals = list(eigenvalues) if listed else [eigenvalues]
    if not listed or not (len(vals) == dim if dim is not None else vals) or not all(map(_finite_positive, vals)):
        count = f"data.dim = {dim}" if dim is not None else "a non-empty list of"
        raise ValueError(f"data.spectrum.eigenvalues must be {count} finite numbers > 0, "
                         f"got {vals if listed else eigenvalues}")
    return torch.tensor([float(x) for x in vals], dtype=torch.float64)


def file_spectrum(path) -> torch.Tensor:
    """Eigenvalues λ_1..λ_d read from `path` (.npy: any shape, flattened; .txt: whitespace/comma separated),
    float64 (d,), d the number of values. Zeros are allowed (rank-deficient Σ); negative round-off
    (≥ −1e-8·max λ) is clamped to 0 with a warning; anything else is a one-line ValueError naming data.path."""
    import warnings
    from pathlib import Path

    import numpy as np

    p = Path(str(path)) if path is not None else None
    if p is None or p.suffix not in (".npy", ".txt") or not p.is_file():
        raise ValueError(f"data.path must be an existing .npy or .txt file of eigenvalues, got {path}")
    try:
        arr = np.load(p, allow_pickle=False) if p.suffix == ".npy" else \
            np.loadtxt(p, delimiter=None if "," not in p.read_text()[:4096] else ",", ndmin=1)
        lam = torch.as_tensor(np.asarray(arr, dtype=np.float64).reshape(-1))
    except (ValueError, OSError) as e:
        raise ValueError(f"data.path must hold numbers (.npy or text), got {path}: {str(e).splitlines()[0]}") from None
    if lam.numel() == 0 or not torch.isfinite(lam).all():
        raise ValueError(f"data.path must hold a non-empty list of finite eigenvalues, got {path}")
    top = float(lam.abs().max())
    if float(lam.min()) < -1e-8 * top:
        raise ValueError(f"data.path must hold eigenvalues >= 0 (round-off >= -1e-8·max is clamped), got min "
                         f"{float(lam.min()):.3g} in {path}")
    if (lam < 0).any():
        warnings.warn(f"data.path: {int((lam < 0).sum())} negative eigenvalues (round-off, >= {float(lam.min()):.3g}) "
                      "clamped to 0")
        lam = lam.clamp_min(0)
    if not (lam > 0).any():
        raise ValueError(f"data.path must hold at least one eigenvalue > 0, got all zeros in {path}")
    return lam


def random_orthogonal(dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A Haar-distributed orthogonal matrix (QR of a Gaussian matrix with the sign fix), (d, d) float64."""
    g = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


class Gaussian:
    """N(μ, Σ) with Σ = U diag(λ) Uᵀ.

    Args:
        eigenvalues: λ, shape (d,), the power spectrum.
        basis: U, shape (d, d) orthogonal (columns are eigenvectors); None = identity.
        mean: μ, shape (d,); None = 0.
    """

    def __init__(self, eigenvalues: torch.Tensor, basis: torch.Tensor | None = None,
                 mean: torch.Tensor | None = None):
        self.eigenvalues = torch.as_tensor(eigenvalues, dtype=torch.float64)
        d = self.eigenvalues.numel()
        self.basis = torch.eye(d, dtype=torch.float64) if basis is None else basis.to(torch.float64)
        self.mean = torch.zeros(d, dtype=torch.float64) if mean is None else mean.to(torch.float64)

    @classmethod
    def from_covariance(cls, covariance: torch.Tensor) -> "Gaussian":
        """N(0, Σ) from Σ (d, d) by eigh, Σ = U diag(λ) Uᵀ, with rounding's negative λ clamped to 0 (the
        Gaussian surrogate of a non-Gaussian data set)."""
        lam, U = torch.linalg.eigh(covariance)
        return cls(lam.clamp_min(0), U)

    @property
    def dim(self) -> int:
        return self.eigenvalues.numel()

    @property
    def covariance(self) -> torch.Tensor:
        """Σ = U diag(λ) Uᵀ, (d, d) float64."""
        return (self.basis * self.eigenvalues) @ self.basis.T

    def sample(self, shape, generator: torch.Generator | None = None, dtype=torch.float64,
               device=None) -> torch.Tensor:
        """x = μ + U diag(√λ) z, z ~ N(0, I): shape (*shape, d)."""
        shape = tuple(shape)
        device = torch.device("cpu") if device is None else torch.device(device)
        z = torch.randn(*shape, self.dim, generator=generator, dtype=torch.float64, device=device)
        root = (self.basis * self.eigenvalues.sqrt()).to(device)
        return (self.mean.to(device) + z @ root.T).to(dtype)


def make_gaussian(spectrum: torch.Tensor, basis: str = "random", seed: int = 0) -> Gaussian:
    """The target of a run: λ from `spectrum`, and U = identity or Haar-random (drawn from `seed`)."""
    check_basis(basis)
    d = spectrum.numel()
    if basis == "identity":
        return Gaussian(spectrum)
    return Gaussian(spectrum, random_orthogonal(d, torch.Generator().manual_seed(seed)))
