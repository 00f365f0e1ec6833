"""Flow matching (issue 23): sampler=flow with objective=cfm against references derived here.

Per eigenvalue λ of Σ the exact velocity of the linear path x_t = (1 − t)x₀ + t x₁ (x₀ ~ N(0, 1), x₁ ~ N(0, λ))
is v = β(t)x with β(t) = E[(x₁ − x₀)x_t]/E[x_t²] = (tλ − (1 − t))/((1 − t)² + t²λ): the regression of the
target u = x₁ − x₀ on x_t, computed here from the path's second moments. The schemes are written below from
their definitions (one scalar per eigenvalue, the ODE x′ = β(t)x), not from the code's Butcher tableaux.
"""
import math

import pytest
import torch

from gsm.samplers.flow import Flow
from gsm.theory.bures import bures_wasserstein2
from gsm.theory.prediction import sampler_prediction
from gsm.training.flow_matching import CFM
from gsm.training.objectives import DSM

F64 = torch.float64


def beta(t, lam):
    """The exact velocity's factor β(t): Cov(u, x_t)/Var(x_t) on the path, u = x₁ − x₀."""
    cov_u_x = t * lam - (1 - t)          # E[(x₁ − x₀)((1 − t)x₀ + t x₁)] = tλ − (1 − t)
    var_x = (1 - t) ** 2 + t * t * lam
    return cov_u_x / var_x


def scheme_factor(scheme, lam, K):
    """x_K / x_0 per eigenvalue after K steps of the scheme on x′ = β(t)x, t_k = k/K."""
    h, x = 1.0 / K, torch.ones_like(lam)
    for k in range(K):
        t = k * h
        f = lambda s, y: beta(s, lam) * y
        if scheme == "euler":
            x = x + h * f(t, x)
        elif scheme == "midpoint":
            x = x + h * f(t + h / 2, x + h / 2 * f(t, x))
        elif scheme == "heun":
            pred = x + h * f(t, x)
            x = x + h / 2 * (f(t, x) + f(t + h, pred))
        elif scheme == "rk4":
            k1 = f(t, x)
            k2 = f(t + h / 2, x + h / 2 * k1)
            k3 = f(t + h / 2, x + h / 2 * k2)
            k4 = f(t + h, x + h * k3)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def random_covariance(lam, seed=0):
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(lam.numel(), lam.numel(), generator=g, dtype=F64))
    return U @ torch.diag(lam) @ U.T


def oracle_velocities(sampler, Sigma):
    alphas, stds = sampler.noise_levels()
    return CFM().score_function(Sigma, alphas, stds).unsqueeze(0)       # (1, L, d, d)


LAM = torch.tensor([0.07, 0.3, 1.0, 2.5, 6.0], dtype=F64)


def test_the_exact_velocity_transports_the_path_marginals():
    """c_t = (1 − t)² + t²λ, the path's variance, solves the flow's variance equation c′ = 2β(t)c
    (central differences), so the exact flow maps N(0, 1) to N(0, λ); CFM's target is −β."""
    t = torch.linspace(0.01, 0.99, 50, dtype=F64).view(-1, 1)
    c = lambda s: (1 - s) ** 2 + s * s * LAM
    eps = 1e-6
    dc = (c(t + eps) - c(t - eps)) / (2 * eps)
    torch.testing.assert_close(dc, 2 * beta(t, LAM) * c(t), rtol=1e-8, atol=1e-10)
    b = CFM().target(LAM, t.flatten(), 1 - t.flatten())
    torch.testing.assert_close(b, -beta(t, LAM), rtol=1e-12, atol=1e-14)


def test_the_cfm_minimiser_is_the_dsm_minimiser_through_tweedie():
    """E[x₁ − x₀ | x_t] = (x + (1 − t)s(x))/t with s the score of x_t (Tweedie, x₀ = (x − t x₁)/(1 − t)):
    v = −Bx, so B = ((1 − t)A − I)/t with A the DSM minimiser at y = t x₁ + (1 − t)z, on any second moment X."""
    X = random_covariance(LAM, 1)
    t = torch.tensor([0.1, 0.4, 0.75, 0.99], dtype=F64)
    B = CFM().score_function(X, t, 1 - t)
    A = DSM().score_function(X, t, 1 - t)
    eye = torch.eye(5, dtype=F64)
    torch.testing.assert_close(B, ((1 - t).view(-1, 1, 1) * A - eye) / t.view(-1, 1, 1), rtol=1e-10, atol=1e-12)


def test_velocity_at_the_ends_needs_no_inverse_of_the_data_moment():
    """t = 0: B = I (v = −x₀ + E x₁ = −x); t = 1: B = −I (v = x₁ − E[x₀ | x₁] = x), even for a singular X."""
    X = torch.diag(torch.tensor([0.0, 1.0, 2.0], dtype=F64))
    B = CFM().score_function(X, torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([1.0, 0.0], dtype=F64))
    torch.testing.assert_close(B[0], torch.eye(3, dtype=F64))
    torch.testing.assert_close(B[1], -torch.eye(3, dtype=F64))


def test_score_series_is_the_matrix_function_on_a_jordan_block():
    """f(μ + x) = Σ_r f_r xʳ: on J = μI + N (N the 3×3 shift) the matrix function is Σ_r f_r Nʳ."""
    mu = torch.tensor([0.4, 2.0], dtype=F64)
    t = torch.tensor([0.0, 0.3, 0.8, 1.0], dtype=F64)
    f = CFM().score_series(mu, t, 1 - t, order=3)                        # (L, d, 3)
    N = torch.diag(torch.ones(2, dtype=F64), 1)
    for i, m in enumerate(mu.tolist()):
        J = m * torch.eye(3, dtype=F64) + N
        B = CFM().score_function(J, t, 1 - t)                            # (L, 3, 3)
        ref = sum(f[:, i, r].view(-1, 1, 1) * torch.linalg.matrix_power(N, r) for r in range(3))
        torch.testing.assert_close(B, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scheme", ["euler", "midpoint", "heun", "rk4"])
@pytest.mark.parametrize("K", [1, 3, 17])
def test_oracle_law_is_the_per_eigenvalue_recursion(scheme, K):
    """The chain's full-matrix law for the oracle velocities in a random basis is U diag(m_K²) Uᵀ with m_K
    the scalar scheme above (1e-10 relative); the prediction's bias Σ(√λ − |m_K|)² equals it to 1e-10 relative."""
    sampler = Flow(scheme=scheme, steps=K, particles=10)
    Sigma = random_covariance(LAM)
    C = sampler.covariance(oracle_velocities(sampler, Sigma))[0]
    m = scheme_factor(scheme, LAM, K)
    _, U = torch.linalg.eigh(Sigma)
    lam_sorted, order = torch.sort(LAM)
    ref = U @ torch.diag(m[order] ** 2) @ U.T
    torch.testing.assert_close(C, ref, rtol=1e-10, atol=1e-12)
    w2_ref = float(((LAM.sqrt() - m.abs()) ** 2).sum())
    # the full-matrix Bures distance cancels terms of size tr Σ ≈ 10: rounding ~1e-13 absolute
    assert float(bures_wasserstein2(Sigma, C)) == pytest.approx(w2_ref, rel=1e-9, abs=1e-12)
    pred = sampler_prediction(sampler, LAM, objective=CFM())
    assert pred["total"] == pytest.approx(w2_ref, rel=1e-10, abs=1e-15)
    assert sampler.evaluations == {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}[scheme] * K


@pytest.mark.parametrize("scheme, order", [("euler", 1), ("midpoint", 3), ("heun", 2), ("rk4", 4)])
def test_convergence_order_to_the_exact_flow(scheme, order):
    """W2(K) ∝ K^{−p} with the exact velocity: the least-squares slope of log W2 on log K, K = 8..64,
    within ±0.3 of the scheme's order p. Midpoint is of order 3 here, not 2: for β = c′/(2c) with c(t) =
    (1 − t)² + t²λ quadratic in t, the h³ term of its local error in log x vanishes identically (expand
    log(1 + hβ(t)(1 + (h/2)β(t − h/2))) − ½ log(c(t + h/2)/c(t − h/2)) in h: the h² and h³ coefficients
    are 0; docs/theory.md, "Flow matching")."""
    lam = torch.tensor([0.3, 1.0, 2.5], dtype=F64)
    Ks = [8, 16, 32, 64]
    w = [math.sqrt(sampler_prediction(Flow(scheme=scheme, steps=K), lam, objective=CFM())["total"]) for K in Ks]
    x, y = torch.log(torch.tensor(Ks, dtype=F64)), torch.log(torch.tensor(w, dtype=F64))
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    assert -slope == pytest.approx(order, abs=0.3), (scheme, w)


def test_the_exact_flow_maps_the_source_to_the_data():
    """scheme=ode: its law is Σ (bias 0), and its particles Σ^{½}x₀ have second moment Σ within 4 s.e.
    per entry; RK4 with K = 200 on the oracle velocity gives W2² < 1e-12 (the discrete flow converges to it)."""
    Sigma = random_covariance(LAM, 2)
    ode = Flow(scheme="ode", particles=20000)
    ode.bind(Sigma)
    A = torch.zeros(1, 2, 5, 5, dtype=F64)
    torch.testing.assert_close(ode.covariance(A)[0], Sigma, rtol=1e-12, atol=1e-12)
    x = ode.sample(None, 1, 5, generator=torch.Generator().manual_seed(0), dtype=F64)[0]
    S = x.T @ x / x.shape[0]
    se = torch.sqrt((Sigma ** 2 + torch.outer(Sigma.diagonal(), Sigma.diagonal())) / x.shape[0])
    assert bool(((S - Sigma).abs() < 4 * se).all())
    assert sampler_prediction(ode, LAM, objective=CFM())["total"] == 0.0
    rk4 = Flow(scheme="rk4", steps=200)
    assert float(bures_wasserstein2(Sigma, rk4.covariance(oracle_velocities(rk4, Sigma))[0])) < 1e-12



@pytest.mark.parametrize("scheme", ["euler", "heun"])
def test_particles_follow_the_law(scheme):
    """The particles each scheme pushes through its steps (M = 20000, float64) have the second moment of the
    scheme's exact law within 4 s.e. per entry (s.e. of a Gaussian second moment, from that law), for a
    non-diagonal Σ and a coarse grid (K = 4), where the law is far from Σ."""
    Sigma = random_covariance(LAM, 3)
    flow = Flow(scheme=scheme, steps=4, particles=20000)
    B = oracle_velocities(flow, Sigma)
    C = flow.covariance(B)[0]

    class Velocity:
        linear = True

        def matrices(self):
            return B
    x = flow.sample(Velocity(), 1, 5, generator=torch.Generator().manual_seed(4), dtype=F64)[0]
    S = x.T @ x / x.shape[0]
    se = torch.sqrt((C ** 2 + torch.outer(C.diagonal(), C.diagonal())) / x.shape[0])
    assert float(bures_wasserstein2(Sigma, C)) > 1e-3          # the law is not the target: the test can see it
    assert bool(((S - C).abs() < 4 * se).all()), ((S - C) / se)

@pytest.mark.parametrize("scheme", ["euler", "midpoint", "heun", "rk4"])
def test_plug_in_velocity_against_its_prediction_by_monte_carlo(scheme):
    """train.solver=exact: B_l = B_l(Σ̂), Σ̂ = (1/N) Σ x xᵀ from N = 10d samples. R = 2000 replicates of the
    exact law's W2²; its mean agrees with bias + 1/N term within 3 s.e. (measured z: +0.6 euler, +0.9 heun,
    +0.8 midpoint and rk4), and the 1/N term is resolved: larger than 10 s.e. (≥ 30 s.e. here)."""
    lam = torch.tensor([0.2, 0.5, 1.0, 2.0], dtype=F64)
    d, N, R = 4, 40, 2000
    Sigma = random_covariance(lam, 3)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(R, N, d, generator=g, dtype=F64) @ torch.linalg.cholesky(Sigma).T
    S_hat = x.transpose(1, 2) @ x / N
    sampler = Flow(scheme=scheme, steps=4)
    alphas, stds = sampler.noise_levels()
    w2 = bures_wasserstein2(Sigma.expand(R, d, d), sampler.covariance(CFM().score_function(S_hat, alphas, stds)))
    mean, se = float(w2.mean()), float(w2.std() / math.sqrt(R))
    pred = sampler_prediction(sampler, lam, objective=CFM(), n=N)
    assert pred["generalization"] > 10 * se
    assert abs(mean - pred["total"]) < 3 * se, (mean, se, pred["total"])
