"""Bures–Wasserstein: against scipy's sqrtm and POT (which returns W2, not W2²)."""
import numpy as np
import pytest
import scipy.linalg
import torch

from gsm.theory.bures import bures_wasserstein2, bures_wasserstein2_commuting, second_moment

ot = pytest.importorskip("ot")


def _scipy_bw2(S1, S2):
    r = scipy.linalg.sqrtm(S1)
    return np.trace(S1) + np.trace(S2) - 2 * np.trace(scipy.linalg.sqrtm(r @ S2 @ r)).real


def _spd(rng, d, eig):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * eig) @ q.T


def _cases():
    rng = np.random.default_rng(0)
    d = 6
    yield "random", _spd(rng, d, rng.uniform(0.1, 3, d)), _spd(rng, d, rng.uniform(0.1, 3, d))
    x = rng.standard_normal((3, d))                      # rank 3 < d (N < d)
    yield "rank_deficient", x.T @ x / 3, _spd(rng, d, rng.uniform(0.1, 3, d))
    yield "near_singular", _spd(rng, d, np.r_[1e-9, rng.uniform(0.5, 2, d - 1)]), _spd(rng, d, rng.uniform(0.1, 3, d))


@pytest.mark.parametrize("name,S1,S2", list(_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_bw_matches_scipy_and_pot(name, S1, S2):
    ours = float(bures_wasserstein2(torch.tensor(S1), torch.tensor(S2)))
    # B² is symmetric; POT and scipy take the square root of their first argument without a
    # clamp (NaN or no convergence for a rank-deficient S1), so they get the full-rank one first.
    assert ours == pytest.approx(_scipy_bw2(S2, S1), rel=1e-7, abs=1e-12)
    if name == "rank_deficient":   # POT's unclamped sqrt of the rank-3 cross term gives NaN there
        return
    pot_w2 = float(ot.gaussian.bures_wasserstein_distance(np.zeros(6), np.zeros(6), S2, S1))
    assert ours == pytest.approx(pot_w2 ** 2, rel=1e-7, abs=1e-12)     # POT returns W2, not W2²
    assert ours == pytest.approx(_scipy_bw2(S2, S1), rel=1e-7, abs=1e-12)


def test_bw_batched_symmetric_and_zero_on_diagonal():
    torch.manual_seed(0)
    X = torch.randn(5, 4, 4, dtype=torch.float64)
    S = X @ X.transpose(-1, -2) + 0.1 * torch.eye(4)
    T = S.flip(0)
    d = bures_wasserstein2(S, T)
    assert d.shape == (5,)
    torch.testing.assert_close(d, bures_wasserstein2(T, S), rtol=1e-9, atol=1e-12)
    assert bures_wasserstein2(S, S).abs().max() < 1e-10


def test_bw_commuting_fast_path():
    lam1 = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)
    lam2 = torch.tensor([0.5, 0.9, 2.0], dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    full = bures_wasserstein2((Q * lam1) @ Q.T, (Q * lam2) @ Q.T)
    torch.testing.assert_close(full, bures_wasserstein2_commuting(lam1, lam2), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-12, 1e6])
def test_bw_finite_nonnegative_badly_scaled(scale):
    eig = torch.logspace(-12, 6, 8, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    S1 = (Q * eig) @ Q.T
    S2 = S1 * (1 + 1e-3) + scale * torch.eye(8, dtype=torch.float64)
    v = bures_wasserstein2(S1, S2)
    assert torch.isfinite(v) and v >= 0


def test_second_moment_is_known_mean_estimator():
    x = torch.randn(3, 1000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(second_moment(x)[1], x[1].T @ x[1] / 1000)
