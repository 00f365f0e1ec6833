"""The Gaussian-structure probe (gsm.theory.probe) against independent computations: the exact DSM minimiser on
centred Gaussian data is the Gaussian score itself (explained variance 1 to rounding); a DSM-SGD linear score's
explained variance against its closed form from the trained matrices and the data's moments, written here; the
mixture's exact (non-linear) score against a numpy transcription of the definitions."""
import math

import numpy as np
import pytest
import torch

from gsm.data.mixture import two_clusters
from gsm.scores.linear import LinearScore
from gsm.theory.probe import gaussian_score, gaussian_structure, level_structure
from gsm.training.dsm import empirical_second_moment, train_linear_dsm
from gsm.training.objectives import DSM

F64 = torch.float64
ALPHAS = torch.tensor([0.98, 0.8, 0.4], dtype=F64)
STDS = (1 - ALPHAS ** 2).sqrt()


def gaussian_data(R, N, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    lam = torch.linspace(0.2, 2.0, d, dtype=F64)
    return torch.randn(R, N, d, generator=g, dtype=F64) * lam.sqrt()


def linear_score(A):
    model = LinearScore(A.shape[-1], replicates=A.shape[0], levels=A.shape[1]).to(F64)
    model.set_matrices(A)
    return model


def test_the_exact_dsm_minimiser_on_centred_data_is_the_gaussian_score():
    """x centred exactly (μ̂ = 0): the DSM minimiser (α²Σ̂ + s²I)⁻¹ of gsm's objective (train.solver=exact) is s_G,
    so the explained variance is 1 and the affine fit exact, to rounding, at every level."""
    x = gaussian_data(3, 200, 6)
    x = x - x.mean(-2, keepdim=True)
    model = linear_score(DSM().score_function(empirical_second_moment(x), ALPHAS, STDS))
    out = gaussian_structure(model, x, ALPHAS, STDS, points=512, generator=torch.Generator().manual_seed(1))
    assert out["explained_variance"].shape == out["linear_fit_residual"].shape == (3, 3)
    assert torch.allclose(out["explained_variance"], torch.ones(3, 3, dtype=F64), rtol=0, atol=1e-12)
    assert float(out["linear_fit_residual"].max()) < 1e-20
    assert torch.allclose(out["sigma"], STDS / ALPHAS)


def closed_form_explained_variance(A, x, alpha, std):
    """1 − E‖−Ay − s_G(y)‖² / E‖Ay‖² over y = αx + sz, x uniform on the N points, written from the moments:
    with P = (α²C + s²I)⁻¹ (C the centred covariance), D = P − A, c = αPμ̂, S = E yyᵀ = α²X + s²I (X the second
    moment), m = E y = αμ̂: E‖Dy − c‖² = tr(D S Dᵀ) − 2 cᵀD m + ‖c‖², E‖Ay‖² = tr(A S Aᵀ)."""
    A, x = A.numpy(), x.numpy()
    N, d = x.shape
    mu = x.mean(0)
    C = (x - mu).T @ (x - mu) / N
    X = x.T @ x / N
    P = np.linalg.inv(alpha ** 2 * C + std ** 2 * np.eye(d))
    D, c, S, m = P - A, alpha * P @ mu, alpha ** 2 * X + std ** 2 * np.eye(d), alpha * mu
    err = np.trace(D @ S @ D.T) - 2 * c @ D @ m + c @ c
    return 1 - err / np.trace(A @ S @ A.T)


def test_a_dsm_sgd_linear_score_explains_its_gaussian_score_up_to_its_own_sgd_error():
    """One data set (d = 6, N = 400, not centred) trained by DSM-SGD (τ = 0.3, b = 32, 3000 steps): its
    explained variance is 1 − (its SGD and mean error), which the trained A and the data's moments give in
    closed form. The probe, on R = 16 copies of the model (independent Monte-Carlo draws, Q = 2048), is within
    4 s.e. of that closed form at every level. The deficit is the SGD error on top of that of the exact DSM
    minimiser on the same data (its mean term, measured 0.0012, 0.0009, 0.0003 at α = 0.98, 0.8, 0.4), and
    small: 1 − EV < 0.05 (measured 0.019, 0.013, 0.004)."""
    x = gaussian_data(1, 400, 6, seed=2)
    A = torch.zeros(1, 3, 6, 6, dtype=F64)
    train_linear_dsm(A, x, alphas=ALPHAS, stds=STDS, tau=0.3, batch_size=32, steps=3000,
                     generator=torch.Generator().manual_seed(3))
    R = 16
    model = linear_score(A.expand(R, -1, -1, -1).clone())
    out = gaussian_structure(model, x.expand(R, -1, -1), ALPHAS, STDS, points=2048,
                             generator=torch.Generator().manual_seed(4))
    minimiser = DSM().score_function(empirical_second_moment(x), ALPHAS, STDS)
    for level, (a, s) in enumerate(zip(ALPHAS.tolist(), STDS.tolist())):
        ev = out["explained_variance"][:, level]
        mean, se = float(ev.mean()), float(ev.std()) / math.sqrt(R)
        exact = closed_form_explained_variance(A[0, level], x[0], a, s)
        assert abs(mean - exact) <= 4 * se, (level, mean, se, exact)
        floor = 1 - closed_form_explained_variance(minimiser[0, level], x[0], a, s)
        assert 0 < floor < 1 - exact < 0.05, (level, floor, exact)
        # the best affine fit is at least as good as the Gaussian one, and a linear score is affine
        assert float(out["linear_fit_residual"][:, level].max()) < 1e-20


def numpy_probe(s_net, y, x, alpha, std):
    """The definitions, written with numpy's solve and lstsq: (explained variance, affine-fit residual)."""
    mu = x.mean(0)
    C = np.cov(x.T, bias=True)
    s_gauss = -np.linalg.solve(alpha ** 2 * C + std ** 2 * np.eye(x.shape[1]), (y - alpha * mu).T).T
    power = (s_net ** 2).sum()
    design = np.hstack([y, np.ones((len(y), 1))])
    coef = np.linalg.lstsq(design, s_net, rcond=None)[0]
    return 1 - ((s_net - s_gauss) ** 2).sum() / power, ((s_net - design @ coef) ** 2).sum() / power


@pytest.mark.parametrize("alpha", [0.999, 0.9, 0.3])
def test_the_mixture_score_against_the_definitions_in_numpy(alpha):
    """The exact score of two clusters (d = 3, Δ = 6) at three levels, on the same points y: the probe's
    explained variance and affine residual equal a numpy transcription to 1e-10; the score is not Gaussian
    near the data (EV < 0.9 at α = 0.999) and nearly Gaussian at high noise (EV > 0.99 at α = 0.3), and the
    affine fit is never worse than the Gaussian score."""
    std = math.sqrt(1 - alpha ** 2)
    mixture = two_clusters(3, separation=6.0)
    g = torch.Generator().manual_seed(5)
    x = mixture.sample((1, 300), generator=g)
    y = alpha * x[:, torch.randint(300, (1500,), generator=g)] + std * torch.randn(1, 1500, 3, generator=g, dtype=F64)
    s_net = mixture.score(y, alpha, std)
    ev, res = level_structure(s_net, gaussian_score(y, x, alpha, std), y)
    ev_np, res_np = numpy_probe(s_net[0].numpy(), y[0].numpy(), x[0].numpy(), alpha, std)
    assert math.isclose(float(ev), ev_np, rel_tol=0, abs_tol=1e-10) and math.isclose(float(res), res_np, abs_tol=1e-10)
    assert float(res) <= 1 - float(ev) + 1e-12
    if alpha == 0.999:
        assert ev_np < 0.9
    if alpha == 0.3:
        assert ev_np > 0.99


def test_bad_input_is_refused_in_one_line():
    x = gaussian_data(1, 10, 4)
    with pytest.raises(ValueError, match=r"^points must be an integer >= 6"):
        gaussian_structure(lambda y, l: y, x, ALPHAS, STDS, points=5)
    with pytest.raises(ValueError, match=r"^gaussian_structure needs .* s_l > 0"):
        gaussian_structure(lambda y, l: y, x, ALPHAS, torch.zeros(3, dtype=F64))
