"""sampler=flow's VP path and SD3's time shift (issue 23) against references derived here.

The VP path in flow time t ∈ [0, 1] (source at t = 0) is written below from sampler=vp's definitions: VP time
τ = T − t(T − ε), B(τ) = β_min τ + (β_max − β_min)τ²/2, a = e^{−B/2}, b = √(1 − e^{−B}), and per eigenvalue λ
its exact velocity is the regression of the conditional target u = ȧx₁ + ḃx₀ on x_t = a x₁ + b x₀,
β(t) = (aȧλ + bḃ)/(a²λ + b²), with ȧ, ḃ by central differences of a, b (not the code's closed forms). The
probability-flow ODE of sampler=vp (dy/du = ½β_VP(τ)(1 − 1/λ_τ)y in reverse time u, λ_τ = e^{−B}λ + 1 − e^{−B})
must be the same ODE, and its exact law from N(0, 1) is λ_ε/λ_T.
"""
import math

import pytest
import torch

from gsm.samplers.flow import Flow
from gsm.samplers.vp import VP
from gsm.theory.bures import bures_wasserstein2
from gsm.theory.prediction import sampler_prediction
from gsm.training.flow_matching import CFM

F64 = torch.float64
LAM = torch.tensor([0.07, 0.3, 1.0, 2.5, 6.0], dtype=F64)
BMIN, BMAX, T, EPS = 0.1, 20.0, 1.0, 1e-3


def vp_B(tau):
    return BMIN * tau + 0.5 * (BMAX - BMIN) * tau * tau


def ab(t):
    """(a, b) of the VP path at flow time t."""
    e = math.exp(-vp_B(T - t * (T - EPS)))
    return math.sqrt(e), math.sqrt(1 - e)


def vp_beta(t, lam):
    """The VP path's exact velocity factor, from the regression of u on x_t (ȧ, ḃ by central differences)."""
    a, b = ab(t)
    h = 1e-6
    (a1, b1), (a0, b0) = ab(min(t + h, 1.0)), ab(max(t - h, 0.0))
    da, db = (a1 - a0) / (min(t + h, 1.0) - max(t - h, 0.0)), (b1 - b0) / (min(t + h, 1.0) - max(t - h, 0.0))
    return (a * da * lam + b * db) / (a * a * lam + b * b)


def exact_vp_beta(t, lam):
    """The same factor from sampler=vp's probability-flow ODE at τ(t): (T − ε)·½β(τ)(1 − 1/λ_τ)."""
    tau = T - t * (T - EPS)
    e = math.exp(-vp_B(tau))
    return (T - EPS) * 0.5 * (BMIN + tau * (BMAX - BMIN)) * (1 - 1 / (e * lam + 1 - e))


def linear_beta(t, lam):
    return (t * lam - (1 - t)) / ((1 - t) ** 2 + t * t * lam)


def factor(scheme, beta, lam, grid):
    """x_K / x_0 per eigenvalue of the scheme on x′ = β(t)x over the grid t_0 < … < t_K."""
    x = torch.ones_like(lam)
    f = lambda s, y: beta(s, lam) * y
    for t, t1 in zip(grid[:-1], grid[1:]):
        h = t1 - t
        if scheme == "euler":
            x = x + h * f(t, x)
        elif scheme == "midpoint":
            x = x + h * f(t + h / 2, x + h / 2 * f(t, x))
        elif scheme == "heun":
            x = x + h / 2 * (f(t, x) + f(t1, x + h * f(t, x)))
        else:
            k1 = f(t, x)
            k2 = f(t + h / 2, x + h / 2 * k1)
            k3 = f(t + h / 2, x + h / 2 * k2)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + f(t1, x + h * k3))
    return x


def sd3_grid(K, s):
    """diffusers' FlowMatchEuler shift on σ = 1 − t: σ ↦ sσ/(1 + (s − 1)σ), at σ_k = 1 − k/K."""
    return [1 - s * sig / (1 + (s - 1) * sig) for sig in (1 - k / K for k in range(K + 1))]


def oracle_variance(sampler, lam=LAM):
    return sampler.law(lam).variance(CFM().target(lam, *sampler.noise_levels()))


def test_the_vp_paths_velocity_is_the_probability_flow_of_sampler_vp():
    """The regression of ȧx₁ + ḃx₀ on x_t equals sampler=vp's ODE drift at matched times, so the two samplers
    integrate one ODE: within 1e-9 absolute at interior times (the central difference's error, measured
    ≤ 9.2e-11 here; at the ends a one-sided difference is only first order)."""
    for t in [0.05, 0.37, 0.8, 0.99]:
        torch.testing.assert_close(vp_beta(t, LAM), exact_vp_beta(t, LAM), rtol=0, atol=1e-9)


@pytest.mark.parametrize("scheme", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("K", [3, 20])
def test_vp_path_schemes_equal_sampler_vp_at_matched_times(scheme, K):
    """Flow(path=vp) with the exact velocity and sampler=vp's flow-ODE scheme (init normal, same β, T, ε, K):
    the same per-eigenvalue law to 1e-10 relative."""
    flow = oracle_variance(Flow(scheme=scheme, steps=K, path="vp"))
    vp = VP(scheme=scheme, steps=K).spectral_variance(LAM)
    torch.testing.assert_close(flow, vp, rtol=1e-10, atol=0)


@pytest.mark.parametrize("scheme", ["euler", "midpoint", "heun", "rk4"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_vp_path_law_is_the_per_eigenvalue_recursion(scheme, shift):
    """Each scheme on the VP path (with and without shift 3), exact velocity: the output variance is the
    square of the scalar recursion above on the exact factor (1e-10 relative), and the full-matrix law in a
    random basis is the same."""
    K = 7
    sampler = Flow(scheme=scheme, steps=K, path="vp", shift=shift)
    ref = factor(scheme, exact_vp_beta, LAM, sd3_grid(K, shift)) ** 2
    torch.testing.assert_close(oracle_variance(sampler), ref, rtol=1e-10, atol=0)
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=F64))
    Sigma = U @ torch.diag(LAM) @ U.T
    B = CFM().score_function(Sigma, *sampler.noise_levels()).unsqueeze(0)
    torch.testing.assert_close(sampler.covariance(B)[0], U @ torch.diag(ref) @ U.T, rtol=1e-10, atol=1e-12)


def test_vp_path_flow_converges_to_sampler_vps_probability_flow_law():
    """RK4 with the exact velocity on the VP path converges to λ_ε/λ_T, sampler=vp's exact ODE law from N(0, I)
    (written here): measured relative error 1.32e-5 at K = 50 and 7.4e-7 at K = 100 (×17.8; order 4: ×16);
    asserted below 2× the measured at K = 100, and halving h cuts it by > 12. scheme=ode is that law to 1e-12."""
    e_T, e_eps = math.exp(-vp_B(T)), math.exp(-vp_B(EPS))
    ref = (e_eps * LAM + 1 - e_eps) / (e_T * LAM + 1 - e_T)
    err = [float((oracle_variance(Flow(scheme="rk4", steps=K, path="vp")) / ref - 1).abs().max()) for K in (50, 100)]
    assert err[1] < 1.5e-6 and err[0] / err[1] > 12, err
    torch.testing.assert_close(oracle_variance(Flow(scheme="ode", path="vp")), ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(VP(scheme="ode").spectral_variance(LAM), ref, rtol=1e-12, atol=0)
    ode = Flow(scheme="ode", path="vp")
    ode.bind(torch.diag(LAM))
    torch.testing.assert_close(ode.covariance(torch.zeros(1, 2, 5, 5, dtype=F64))[0], torch.diag(ref),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("scheme", ["euler", "midpoint", "heun", "rk4"])
@pytest.mark.parametrize("shift", [0.5, 3.0])
def test_the_shifted_grid_is_sd3s(scheme, shift):
    """sampler.shift=s on the linear path: the grid is diffusers' σ ↦ sσ/(1 + (s − 1)σ) on σ = 1 − k/K
    (Euler's level times, 1e-12), and the law the recursion on that grid (1e-10 relative)."""
    K = 6
    sampler = Flow(scheme=scheme, steps=K, shift=shift)
    grid = sd3_grid(K, shift)
    if scheme == "euler":
        torch.testing.assert_close(sampler.times, torch.tensor(grid[:-1], dtype=F64), rtol=0, atol=1e-12)
    ref = factor(scheme, linear_beta, LAM, grid) ** 2
    torch.testing.assert_close(oracle_variance(sampler), ref, rtol=1e-10, atol=0)


def test_shift_one_and_the_linear_path_are_todays_sampler():
    """shift = 1 and path = linear are the defaults: the same level times and law as Flow() bit for bit."""
    for scheme in ["euler", "midpoint", "heun", "rk4"]:
        a, b = Flow(scheme=scheme, steps=5), Flow(scheme=scheme, steps=5, shift=1.0, path="linear")
        assert torch.equal(a.times, b.times)
        assert torch.equal(oracle_variance(a), oracle_variance(b))


@pytest.mark.parametrize("kwargs, key", [
    (dict(path="cosine"), "sampler.path"), (dict(shift=0.0), "sampler.shift"), (dict(shift=-1.0), "sampler.shift"),
    (dict(shift=float("nan")), "sampler.shift"), (dict(path="vp", eps=0.0), "sampler.eps"),
    (dict(path="vp", eps=1.0), "sampler.eps"), (dict(path="vp", beta_min=0.0), "sampler.beta_min"),
    (dict(path="vp", beta_max=0.05), "sampler.beta_max"), (dict(path="vp", T=0.0), "sampler.T")])
def test_bad_path_and_shift_are_refused_in_one_line(kwargs, key):
    with pytest.raises(ValueError) as e:
        Flow(**kwargs)
    msg = str(e.value)
    assert msg.startswith(key + " must be") and "\n" not in msg, msg


@pytest.mark.slow
def test_plug_in_velocity_on_the_vp_path_against_its_prediction():
    """train.solver=exact on the VP path, heun K = 4 and euler K = 8, d = 4, N = 10d, R = 1000: the mean W2² of
    the exact law within 3 s.e. of bias + 1/N term (measured z: see docs/flow.md), the 1/N term resolved
    (> 10 s.e.)."""
    lam = torch.tensor([0.2, 0.5, 1.0, 2.0], dtype=F64)
    d, N, R = 4, 40, 1000
    g = torch.Generator().manual_seed(7)
    U, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    Sigma = U @ torch.diag(lam) @ U.T
    x = torch.randn(R, N, d, generator=g, dtype=F64) @ torch.linalg.cholesky(Sigma).T
    S_hat = x.transpose(1, 2) @ x / N
    for scheme, K in [("heun", 4), ("euler", 8)]:
        sampler = Flow(scheme=scheme, steps=K, path="vp")
        C = sampler.covariance(CFM().score_function(S_hat, *sampler.noise_levels()))
        w2 = bures_wasserstein2(Sigma.expand(R, d, d), C)
        mean, se = float(w2.mean()), float(w2.std() / math.sqrt(R))
        pred = sampler_prediction(sampler, lam, objective=CFM(), n=N)
        assert pred["generalization"] > 10 * se
        assert abs(mean - pred["total"]) < 3 * se, (scheme, mean, se, pred["total"], (mean - pred["total"]) / se)


@pytest.mark.slow
def test_the_vp_path_through_gsm_is_sampler_vp(compose_cfg, tmp_path):
    """Through the pipeline (`gsm.pipeline.run.run`, data=custom): `sampler=flow sampler.path=vp` heun K = 6 with
    model=oracle gives the w2_exact of `sampler=vp sampler.scheme=heun sampler.steps=6` (the spectral backend)
    to 1e-9 relative, and its prediction equals it; the refusals are one-line ConfigErrors; CFM-SGD on the VP
    path validates."""
    from gsm.pipeline.run import run
    from gsm.pipeline.validate import ConfigError, validate_config
    common = ("model=oracle", "data=custom", "replicates=1", "sampler.particles=10", "progress=false", "threads=1")
    flow = run(compose_cfg("sampler=flow", "objective=cfm", "sampler.path=vp", "sampler.scheme=heun",
                           "sampler.steps=6", *common), tmp_path / "flow")
    vp = run(compose_cfg("sampler=vp", "sampler.scheme=heun", "sampler.steps=6", *common), tmp_path / "vp")
    assert flow["status"] == vp["status"] == "ok" and flow["nfe"] == 12
    assert flow["w2_exact"]["mean"] == pytest.approx(vp["w2_exact"]["mean"], rel=1e-9)
    assert flow["w2_predicted"] == pytest.approx(flow["w2_exact"]["mean"], rel=1e-9)
    for bad, key in [(("sampler.shift=0",), "sampler.shift"), (("sampler.path=vp", "sampler.eps=0"), "sampler.eps")]:
        with pytest.raises(ConfigError) as info:
            validate_config(compose_cfg("sampler=flow", "objective=cfm", *bad))
        assert str(info.value).startswith(key + " must be") and "\n" not in str(info.value)
    assert validate_config(compose_cfg("sampler=flow", "objective=cfm", "sampler.path=vp", "train.solver=sgd")) == []
