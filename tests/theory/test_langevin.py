"""The DSM trainer and the Langevin sampler against their exact laws (theory note §1–§3)."""
import math

import pytest
import torch

from gsm.data.gaussian import Gaussian, powerlaw_spectrum, random_orthogonal
from gsm.theory.bures import second_moment
from gsm.scores.linear import LinearScore, dsm_optimum
from gsm.samplers.langevin import langevin_sample, linear_langevin_sample
from gsm.theory.langevin import langevin_covariance, langevin_unstable
from gsm.training.dsm import dsm_loss, empirical_dsm_minimizer, train_linear_dsm

ONE, SIG = torch.ones(1, dtype=torch.float64), torch.full((1,), 0.7, dtype=torch.float64)


def _nonsymmetric_A(d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("steps", [None, 40])
def test_exact_langevin_covariance_matches_particles(steps):
    """Non-symmetric A: particle second moment vs the exact law, entrywise z-scores from the
    Gaussian variance Var(Ĉ_ij) = (C_ii C_jj + C_ij²)/M."""
    d, M, gamma = 4, 40000, 0.1
    A = _nonsymmetric_A(d, 0)
    assert not langevin_unstable(A, gamma)
    K = 400 if steps is None else steps                       # 400 steps: (1−γ a_min)^400 ≈ 1e-9
    g = torch.Generator().manual_seed(1)
    x0 = 1.5 * torch.randn(1, M, d, generator=g, dtype=torch.float64)
    x = linear_langevin_sample(A[None], x0, gamma, K, generator=g)[0]
    C = langevin_covariance(A, gamma, steps, init_var=2.25)
    C_hat = second_moment(x)
    se = ((torch.diagonal(C)[:, None] * torch.diagonal(C)[None, :] + C ** 2) / M).sqrt()
    z = (C_hat - C) / se
    assert z.abs().max() < 4.0, z


def test_generic_and_fused_langevin_agree():
    A = _nonsymmetric_A(3, 2)[None]
    x0 = torch.randn(1, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = linear_langevin_sample(A, x0, 0.05, 7, generator=torch.Generator().manual_seed(3))
    b = langevin_sample(lambda y: -y @ A.transpose(-1, -2), x0, 0.05, 7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_stationary_covariance_solves_lyapunov_equation():
    A, gamma = _nonsymmetric_A(5, 4), 0.2
    C = langevin_covariance(A, gamma)
    torch.testing.assert_close(A @ C + C @ A.T - gamma * A @ C @ A.T, 2 * torch.eye(5, dtype=torch.float64))


def test_unstable_sampler_detected():
    A = torch.diag(torch.tensor([1.0, 30.0], dtype=torch.float64))
    assert langevin_unstable(A, 0.05) == False and langevin_unstable(A, 0.1) == True  # 1 − 0.1·30 = −2
    assert torch.isnan(langevin_covariance(A, 0.1)).all()


def test_dsm_loss_gradient_is_the_closed_form():
    """Autograd of ½‖σ s(y) + z‖² equals σ(σ A y − z) yᵀ (the gradient the trainer uses)."""
    d, B = 3, 7
    x = torch.randn(1, B, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = LinearScore(d, 1, 1).double()
    model.A.data = _nonsymmetric_A(d, 5)[None, None]
    model.A.requires_grad_(True)
    dsm_loss(model, x, ONE, SIG, generator=torch.Generator().manual_seed(9)).sum().backward()
    g = torch.Generator().manual_seed(9)
    torch.randint(1, (B,), generator=g)
    z = torch.randn(x.shape, generator=g, dtype=torch.float64)
    s = float(SIG)
    y = x[0] + s * z[0]
    u = s ** 2 * y @ model.A[0, 0].detach().T - s * z[0]
    torch.testing.assert_close(model.A.grad[0, 0], u.T @ y / B)


def test_sgd_mean_converges_to_empirical_minimizer():
    """Theory §2.1: E[A_k] → A* = (Σ̂ + σ²I)⁻¹ (no bias for constant-step SGD). R chains on the same
    data set, ≥ 30 relaxation times; entrywise z-scores against the across-chain spread."""
    d, N, R, sigma, tau = 3, 50, 512, 1.0, 0.01
    target = Gaussian(powerlaw_spectrum(d), random_orthogonal(d, torch.Generator().manual_seed(0)))
    x = target.sample((1, N), generator=torch.Generator().manual_seed(1)).expand(R, N, d).contiguous()
    s = torch.full((1,), sigma, dtype=torch.float64)
    A_star = empirical_dsm_minimizer(x[:1], ONE, s)[0, 0]
    A = torch.zeros(R, 1, d, d, dtype=torch.float64)
    train_linear_dsm(A, x, alphas=ONE, stds=s, tau=tau, steps=3000, generator=torch.Generator().manual_seed(2))
    mean, se = A[:, 0].mean(0), A[:, 0].std(0) / math.sqrt(R)
    z = (mean - A_star) / se
    assert z.abs().max() < 4.0, z


def test_sgd_float32_and_level_gather_paths():
    """Two noise levels (the DDPM path of the trainer) converge to each level's own optimum."""
    d, N, R = 2, 40, 128
    x = torch.randn(1, N, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64).expand(R, N, d)
    alphas = torch.tensor([1.0, 0.6], dtype=torch.float64)
    stds = torch.tensor([1.0, 0.8], dtype=torch.float64)
    A = torch.zeros(R, 2, d, d, dtype=torch.float32)
    train_linear_dsm(A, x.contiguous(), alphas=alphas, stds=stds, tau=0.02, steps=4000, batch_size=2,
                     generator=torch.Generator().manual_seed(1))
    A_star = empirical_dsm_minimizer(x[:1], alphas, stds)[0]
    mean, se = A.double().mean(0), A.double().std(0) / math.sqrt(R)
    assert ((mean - A_star) / se).abs().max() < 4.0


@pytest.mark.parametrize("b,sampling", [(1, "with_replacement"), (3, "with_replacement"), (8, "epochs")])
def test_blocked_sgd_takes_the_per_step_iterates(b, sampling):
    """The CPU's blocked DSM-SGD (K steps per triangular solve) equals the step-by-step trainer on the
    same draws, float64: A after 300 steps (chunk borders, a short last block) and every logged loss."""
    d, N, R = 6, 25, 5
    x = torch.randn(R, N, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = {}
    for blocked in (True, False):
        A = 0.1 * torch.eye(d, dtype=torch.float64).expand(R, 1, d, d).clone()
        losses = []
        train_linear_dsm(A, x, alphas=ONE, stds=SIG, tau=0.03, batch_size=b, steps=300, sampling=sampling,
                         generator=torch.Generator().manual_seed(1), log_every=7,
                         callback=lambda k, v: losses.append((k, v)), blocked=blocked)
        out[blocked] = A, losses
    (A1, l1), (A0, l0) = out[True], out[False]
    assert (A0 - 0.1 * torch.eye(d, dtype=torch.float64)).abs().max() > 0.1          # it moved
    torch.testing.assert_close(A1, A0, rtol=1e-11, atol=1e-13)
    assert [k for k, _ in l1] == [k for k, _ in l0] == list(range(7, 301, 7))
    torch.testing.assert_close(torch.tensor([v for _, v in l1]), torch.tensor([v for _, v in l0]), rtol=1e-11, atol=0)


@pytest.mark.parametrize("L,blocked,sampling", [(1, True, "with_replacement"), (1, False, "epochs"),
                                                (2, False, "with_replacement")])
def test_draws_on_a_second_core_give_the_same_numbers(L, blocked, sampling):
    """gsm.training.prefetch: chunk i + 1 drawn in a background thread while chunk i trains, and ULA's next noise
    while a step runs, consume the generator in the same order: bit-identical results."""
    d, N, R = 5, 20, 4
    x = torch.randn(R, N, d, generator=torch.Generator().manual_seed(0))
    alphas, stds = torch.tensor([1.0, 0.7], dtype=torch.float64)[:L], torch.tensor([0.7, 0.9], dtype=torch.float64)[:L]
    out = []
    for background in (False, True):
        A = torch.zeros(R, L, d, d)
        losses = []
        train_linear_dsm(A, x, alphas=alphas, stds=stds, tau=0.03, steps=600, chunk=128, sampling=sampling,
                         generator=torch.Generator().manual_seed(1), log_every=50, blocked=blocked,
                         callback=lambda k, v: losses.append(v), background=background)
        x0 = torch.randn(R, 300, d, generator=torch.Generator().manual_seed(2))
        ula = linear_langevin_sample(A[:, 0], x0, 0.1, 30, torch.Generator().manual_seed(3), background=background)
        out.append((A, losses, ula))
    assert out[0][0].abs().max() > 0.1 and len(out[0][1]) == 12
    for a, b in zip(out[0], out[1]):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_sgd_divergence_is_recorded_per_replicate():
    d, N = 2, 20
    x = torch.randn(2, N, d, generator=torch.Generator().manual_seed(0))
    x[1] *= 100                                   # replicate 1: τσ²m ≫ 2, diverges; replicate 0 does not
    A = torch.zeros(2, 1, d, d)
    out = train_linear_dsm(A, x, alphas=ONE, stds=SIG, tau=0.05, steps=2000, generator=torch.Generator().manual_seed(1))
    assert out["diverged_at"][0] == -1 and out["diverged_at"][1] > 0
    assert torch.isfinite(A[0]).all()


def test_epoch_sampling_visits_every_point_once_per_epoch():
    from gsm.training.dsm import EpochStream
    s = EpochStream(3, 10, torch.Generator().manual_seed(0), "cpu")
    idx = torch.cat([s.take(7), s.take(13)], dim=1)             # two epochs across chunk borders
    for r in range(3):
        assert sorted(idx[r, :10].tolist()) == list(range(10)) == sorted(idx[r, 10:].tolist())


def test_dsm_optimum_levels():
    S = torch.diag(torch.tensor([0.5, 2.0], dtype=torch.float64))
    A = dsm_optimum(S, torch.tensor([1.0, 0.5], dtype=torch.float64), torch.tensor([0.5, 0.9], dtype=torch.float64))
    torch.testing.assert_close(torch.diagonal(A[0]), 1 / torch.tensor([0.75, 2.25], dtype=torch.float64))
    torch.testing.assert_close(torch.diagonal(A[1]), 1 / (0.25 * torch.tensor([0.5, 2.0]) + 0.81).double())
