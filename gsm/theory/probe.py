"""How Gaussian a score is (Wang & Vastola, arXiv 2412.09726): at each noise level y = α x + s z, how much of a
score model s_net the Gaussian score of its training data explains, and how far s_net is from any affine map.

With the training data's empirical mean μ̂ and centred covariance Σ̂ = (1/N) Σ_i (x_i − μ̂)(x_i − μ̂)ᵀ, the
Gaussian score at level (α, s) is that of N(αμ̂, α²Σ̂ + s²I),

    s_G(y) = −(α²Σ̂ + s²I)⁻¹ (y − αμ̂),

and, with E over y = α x + s z, x uniform on the training data, z ~ N(0, I) (Monte Carlo, Q points a level),

    explained_variance  = 1 − E‖s_net(y) − s_G(y)‖² / E‖s_net(y)‖²,
    linear_fit_residual = min_{W, b} E‖s_net(y) − W y − b‖² / E‖s_net(y)‖²   (least squares on [y, 1]).

s_G is one affine map, so on the same points linear_fit_residual ≤ 1 − explained_variance: the gap is how far
the net's best affine part is from the Gaussian one. Both are invariant to rescaling y (σ = s/α, the
variance-exploding noise level, is what the paper's figures use). Float64 throughout.
"""
from __future__ import annotations

import torch

from gsm.checks import number

PROBE_POINTS = 2048     # Q, points a level: the least squares on [y, 1] has d + 1 unknowns per output (Q ≫ d)


def empirical_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ̂ (R, 1, d), Σ̂ (R, d, d)) of the data x (R, N, d): the empirical mean and centred (1/N) covariance, float64."""
    x = x.to(torch.float64)
    mean = x.mean(-2, keepdim=True)
    centred = x - mean
    return mean, centred.transpose(-1, -2) @ centred / x.shape[-2]


def gaussian_score(y: torch.Tensor, x: torch.Tensor, alpha: float, std: float, moments=None) -> torch.Tensor:
    """s_G(y) = −(α²Σ̂ + s²I)⁻¹ (y − αμ̂) of the data x (R, N, d) (μ̂, Σ̂ its empirical mean and centred
    (1/N) covariance, or `moments` = `empirical_moments(x)` when already computed): y (R, B, d) → (R, B, d)
    float64."""
    mean, cov = empirical_moments(x) if moments is None else moments
    eye = torch.eye(cov.shape[-1], dtype=torch.float64, device=cov.device)
    chol = torch.linalg.cholesky(alpha ** 2 * cov + std ** 2 * eye)
    diff = (y.to(torch.float64) - alpha * mean).transpose(-1, -2)                 # (R, d, B)
    return -torch.cholesky_solve(diff, chol).transpose(-1, -2)


def level_structure(s_net: torch.Tensor, s_gauss: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(explained_variance, linear_fit_residual) (R,) each, float64, from the net's scores s_net, the Gaussian
    scores s_gauss and the points y, all (R, B, d) (module doc; the means are over the B points)."""
    s_net, y = s_net.to(torch.float64), y.to(torch.float64)
    power = s_net.pow(2).sum((-1, -2))                                            # Σ‖s_net‖²
    explained = 1 - (s_net - s_gauss.to(torch.float64)).pow(2).sum((-1, -2)) / power
    design = torch.cat([y, torch.ones_like(y[..., :1])], -1)                      # [y, 1] (R, B, d + 1)
    coef = torch.linalg.lstsq(design, s_net).solution
    residual = (s_net - design @ coef).pow(2).sum((-1, -2)) / power
    return explained, residual


def gaussian_structure(score_fn, x: torch.Tensor, alphas, stds, points: int = PROBE_POINTS,
                       generator: torch.Generator | None = None) -> dict:
    """The Gaussian-structure probe of a score model at every level (module doc).

    Args:
        score_fn: called as score_fn(y, l) on y (R, Q, d) for the level index l → s_net (R, Q, d); any model
            of gsm (`model(y, l)`) or a user's function.
        x: the training data (R, N, d) (or (N, d): R = 1), N ≥ 2.
        alphas, stds: (L,) the levels y = α_l x + s_l z (s_l > 0).
        points: Q, points a level.  generator: draws the x's and z's.
    Returns {alphas, stds, sigma (s_l/α_l), explained_variance (R, L), linear_fit_residual (R, L)}, float64.
    """
    x = x.unsqueeze(0) if x.dim() == 2 else x
    R, N, d = x.shape
    number("points", points, d + 2, integer=True, why="more than d + 1: the affine fit's unknowns per output")
    alphas, stds = (torch.as_tensor(v, dtype=torch.float64).flatten().cpu() for v in (alphas, stds))
    if N < 2 or alphas.numel() != stds.numel() or not bool((stds > 0).all()):
        raise ValueError(f"gaussian_structure needs x (R, N >= 2, d) and L levels with s_l > 0, got N = {N}, "
                         f"{alphas.numel()} alphas, {stds.numel()} stds (min {float(stds.min())})")
    explained, residual = [], []
    x = x.to(torch.float64)
    moments = empirical_moments(x)     # the same at every level
    for level, (alpha, std) in enumerate(zip(alphas.tolist(), stds.tolist())):
        pick = torch.randint(N, (R, int(points)), generator=generator, device=x.device)
        x0 = torch.gather(x, 1, pick.unsqueeze(-1).expand(-1, -1, d))
        z = torch.randn(R, int(points), d, generator=generator, dtype=torch.float64, device=x.device)
        y = alpha * x0 + std * z
        with torch.no_grad():
            s_net = score_fn(y, level)
        ev, res = level_structure(s_net, gaussian_score(y, x, alpha, std, moments), y)
        explained.append(ev)
        residual.append(res)
    return {"alphas": alphas, "stds": stds, "sigma": stds / alphas,
            "explained_variance": torch.stack(explained, -1).cpu(), "linear_fit_residual": torch.stack(residual, -1).cpu()}
