"""sampler=vp (Pierret–Galerne VP schemes): exact laws, particles, convergence orders, prediction.

The references are written here from the paper's equations in *its* convention (β_PG = β/2, B_PG = B/2,
N = K + 1 grid points t_k = (T − ε)k/(N − 1), times T − t_k), independently of gsm.samplers.vp and of the law
maps (gsm.theory.chain, gsm.theory.law): the schemes' step matrices from their update formulas
(`_scheme_matrix`), Opitz' formula on full 3×3 Jordan blocks, and the τ term by forward-mode autograd
(tests/theory/autograd_reference.py)."""
import json
import math

import numpy as np
import pytest
import torch

from autograd_reference import second_order_contraction
from gsm.samplers.vp_schemes import SCHEMES, VPSchedule, exact_scores
from gsm.samplers.vp import VP
from gsm.theory.bures import bures_second_order_weights, kernel_n
from gsm.theory.law import ChainLaw, chain_tau_kernel
from gsm.theory.prediction import sampler_prediction
from gsm.training.objectives import DSM

F64 = torch.float64
LAM = torch.tensor([0.02, 0.1, 0.4, 1.0, 2.5], dtype=F64)
BMIN, BMAX, T = 0.1 / 2, 20 / 2, 1.0          # P–G's β (half of Song's)


def beta_pg(t):
    return BMIN + t * (BMAX - BMIN)


def B_pg(t):
    return BMIN * t + (BMAX - BMIN) * t ** 2 / 2


def sig(lam, t):            # P–G eq. (6)
    e = math.exp(-2 * B_pg(t))
    return e * lam + (1 - e)


def pg_recursion(scheme, lam, N, eps, prior):
    """P–G eqs. (11), (13), (15), (17), (19), (23) per eigenvalue, N grid points."""
    tk = [(T - eps) * k / (N - 1) for k in range(N)]
    dt = tk[1] - tk[0]
    v = sig(lam, T) if prior else torch.ones_like(lam)
    f = lambda t: beta_pg(T - t) * (1 - 1 / sig(lam, T - t))           # ODE drift factor
    for k in range(N - 1):
        s, b = sig(lam, T - tk[k]), beta_pg(T - tk[k])
        if scheme == "em":
            v = (1 + dt * b * (1 - 2 / s)) ** 2 * v + 2 * dt * b
        elif scheme == "ei":
            g1 = math.exp(B_pg(T - tk[k]) - B_pg(T - tk[k + 1])) - 1
            g2 = (math.exp(2 * (B_pg(T - tk[k]) - B_pg(T - tk[k + 1]))) - 1) / 2
            v = (1 + g1 * (1 - 2 / s)) ** 2 * v + 2 * g2
        elif scheme == "ddpm":
            bd = 2 * dt * b
            v = (1 / math.sqrt(1 - bd) * (1 - bd / s)) ** 2 * v + bd
        elif scheme == "euler":
            v = (1 + dt * f(tk[k])) ** 2 * v
        elif scheme == "heun":
            v = (1 + dt / 2 * f(tk[k]) + dt / 2 * f(tk[k + 1]) * (1 + dt * f(tk[k]))) ** 2 * v
        elif scheme == "rk4":
            C1 = f(tk[k])
            C2 = f(tk[k] + dt / 2) * (1 + dt / 2 * C1)
            C3 = f(tk[k] + dt / 2) * (1 + dt / 2 * C2)
            C4 = f(tk[k + 1]) * (1 + dt * C3)
            v = (1 + dt / 6 * (C1 + 2 * C2 + 2 * C3 + C4)) ** 2 * v
    return v


def pg_continuous(scheme, lam, eps, prior):
    """P–G eqs. (7) (SDE) and (8) (ODE) from N(0, I), or from p_T (then the law at ε is p_ε)."""
    st, sT = sig(lam, eps), sig(lam, T)
    if prior:
        return st
    if scheme == "ode":
        return st / sT
    return st + math.exp(-2 * (B_pg(T) - B_pg(eps))) * st ** 2 / sT * (1 / sT - 1)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("eps,init", [(0.0, "normal"), (1e-3, "prior"), (1e-2, "normal")])
def test_exact_law_reproduces_pg_recursions(scheme, eps, init):
    K = 40
    s = VP(scheme=scheme, steps=K, eps=eps, init=init)
    got = s.spectral_variance(LAM)
    ref = pg_continuous(scheme, LAM, eps, init == "prior") if scheme in ("sde", "ode") else \
        pg_recursion(scheme, LAM, K + 1, eps, init == "prior")
    assert torch.allclose(got, ref, rtol=1e-12, atol=0)


def _scheme_matrix(scheme, A_at, K, eps):
    """The step matrices written from the update formulas y ↦ y + ... applied to the columns of I, with a
    score matrix function A_at(t) (any, non-commuting), Song's β (= 2β_PG): list of (M_k, q_k)."""
    d = A_at(T).shape[-1]
    I = torch.eye(d, dtype=F64)
    bS = lambda t: 2 * beta_pg(t)
    drift = lambda t, y: 0.5 * bS(t) * (y - A_at(t) @ y)                 # flow ODE, reverse time
    tk = [T - (T - eps) * k / K for k in range(K + 1)]
    out = []
    for k in range(K):
        t0, t1 = tk[k], tk[k + 1]
        h = t0 - t1
        y = I
        if scheme == "em":
            out.append((y + h * (0.5 * bS(t0) * y - bS(t0) * A_at(t0) @ y), h * bS(t0)))
        elif scheme == "ei":
            dB = 2 * (B_pg(t0) - B_pg(t1))
            out.append((math.exp(dB / 2) * y - 2 * (math.exp(dB / 2) - 1) * A_at(t0) @ y, math.exp(dB) - 1))
        elif scheme == "ddpm":
            b = h * bS(t0)
            out.append(((y - b * A_at(t0) @ y) / math.sqrt(1 - b), b))
        elif scheme == "euler":
            out.append((y + h * drift(t0, y), 0.0))
        elif scheme == "heun":
            k1 = drift(t0, y)
            k2 = drift(t1, y + h * k1)
            out.append((y + h / 2 * (k1 + k2), 0.0))
        else:
            tm = 0.5 * (t0 + t1)
            k1 = drift(t0, y)
            k2 = drift(tm, y + h / 2 * k1)
            k3 = drift(tm, y + h / 2 * k2)
            k4 = drift(t1, y + h * k3)
            out.append((y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), 0.0))
    return out


@pytest.mark.parametrize("scheme", ["em", "ei", "ddpm", "euler", "heun", "rk4"])
def test_general_chain_with_non_commuting_scores(scheme):
    """LinearChain.covariance for arbitrary non-symmetric, non-commuting A_t against the update formulas."""
    K, eps, d = 25, 1e-2, 4
    s = VP(scheme=scheme, steps=K, eps=eps)
    g = torch.Generator().manual_seed(1)
    times = s.times.tolist()
    A = torch.eye(d, dtype=F64) + 0.3 * torch.randn(len(times), d, d, generator=g, dtype=F64)
    index = {t: l for l, t in enumerate(times)}
    C = s.covariance(A.unsqueeze(0))[0]
    ref = torch.eye(d, dtype=F64)
    for M, q in _scheme_matrix(scheme, lambda t: A[index[min(times, key=lambda u: abs(u - t))]], K, eps):
        ref = M @ ref @ M.T + q * torch.eye(d, dtype=F64)
    assert torch.allclose(C, ref, rtol=1e-11, atol=1e-13)


def _diagonal_steps(scheme, s, a, K, eps):
    """(m_k, q_k) per step from the update formulas (`_scheme_matrix`) for diagonal scores a (L, d) at the
    sampler's level times: m_k the diagonal of M_k."""
    times = s.times.tolist()
    at = lambda t: torch.diag(a[min(range(len(times)), key=lambda l: abs(times[l] - t))])     # noqa: E731
    return [(M.diagonal(), q) for M, q in _scheme_matrix(scheme, at, K, eps)]


@pytest.mark.parametrize("scheme", ["em", "ei", "ddpm", "euler", "heun", "rk4"])
def test_blocked_diagonal_law_matches_a_per_step_loop(scheme, monkeypatch):
    """The diagonal law by blocks of steps (`StackedSteps`, `diagonal_propagator`: P and h from v_0, and
    h + P²(v′ − v_0) from any other start v′) for any
    diagonal scores, against v ← m_k² v + q_k and P = Π m_k stepped through the update formulas, 1e-12;
    blocks of 3 steps (K = 41: a partial last block) so that the block boundaries are crossed."""
    import gsm.theory.chain as chain_module
    K, eps, d = 41, 1e-2, 5
    monkeypatch.setattr(chain_module, "BLOCK_ELEMENTS", 3 * d + 1)
    s = VP(scheme=scheme, steps=K, eps=eps)
    g = torch.Generator().manual_seed(3)
    a = 0.5 + torch.rand(len(s.times), d, generator=g, dtype=F64)           # not the exact scores
    if scheme in ("em", "ei", "ddpm", "euler"):     # (heun, rk4: m_k > 0 for any real score)
        a[:, 0] = 1000.0    # every m_k < 0 (K odd: P < 0) and |m_k| ≥ 0.2: the sign of P is tested
    steps = _diagonal_steps(scheme, s, a, K, eps)
    v0 = 0.3 + torch.rand(d, generator=g, dtype=F64)
    v, p, traj = v0.clone(), torch.ones(d, dtype=F64), [v0.clone()]
    for m, q in steps:
        v, p = m * m * v + q, p * m
        traj.append(v)
    P, Q = s.chain.diagonal_propagator(a)
    assert torch.allclose(P, p, rtol=1e-12, atol=0) and torch.allclose(P * P * v0 + Q, v, rtol=1e-12, atol=0)
    P1, h1 = s.chain.diagonal_propagator(a, 1.0)
    assert torch.equal(P1, P) and torch.allclose(h1 + P1 * P1 * (v0 - 1.0), v, rtol=1e-12, atol=0)
    assert torch.allclose(s.chain.variance(a, v0), v, rtol=1e-12, atol=0)
    assert torch.allclose(s.chain.variance(a, v0, trajectory=True), torch.stack(traj), rtol=1e-12, atol=0)
    assert torch.allclose(s.chain.factors(a), torch.stack([m for m, _ in steps]), rtol=1e-12, atol=1e-15)
    if scheme in ("euler", "heun", "rk4"):           # noiseless chains: the particles are x·Π m_k
        x = torch.randn(7, d, generator=g, dtype=F64)
        assert torch.allclose(s.chain.sample_diagonal(a, x), x * p, rtol=1e-12, atol=0)


def test_exact_law_is_computed_once_per_run_and_follows_lambda(compose_cfg, tmp_path, monkeypatch):
    """An oracle run computes the chain's law once (the sample, the prediction and its bias terms share it,
    also with the figure on); a second λ is not served the first one's law."""
    from gsm.pipeline.run import run
    from gsm.theory.chain import LinearChain
    calls = []
    original = LinearChain.diagonal_propagator
    monkeypatch.setattr(LinearChain, "diagonal_propagator",
                        lambda self, a, init_var=0.0: calls.append(1) or original(self, a, init_var))
    res = run(compose_cfg(*BASE, "model=oracle", "replicates=2", "sampler.scheme=em", "sampler.steps=30"), tmp_path)
    assert len(calls) == 1 and res["w2_exact"]["mean"] == pytest.approx(res["w2_predicted"], rel=1e-14)
    for scheme in ("heun", "ei"):
        s = VP(scheme=scheme, steps=30, eps=1e-3)
        for lam in (LAM, 2 * LAM):
            assert torch.allclose(s.spectral_variance(lam), pg_recursion(scheme, lam, 31, 1e-3, False), rtol=1e-12, atol=0)
            from_prior = s.exact_variance(lam, s.schedule.marginal(lam, s.T))     # the other start, from the kept law
            assert torch.allclose(from_prior, pg_recursion(scheme, lam, 31, 1e-3, True), rtol=1e-12, atol=0)


def test_prediction_target_is_checked():
    s = VP(scheme="em", steps=10)
    with pytest.raises(ValueError, match=r"^target must be \(a\* of shape \(10, 5\), h\* of shape \(5,\)\)"):
        sampler_prediction(s, LAM, target=(torch.ones(10, 4, dtype=F64), torch.ones(5, dtype=F64)))
    a, h = s.exact_target(LAM)
    assert sampler_prediction(s, LAM, target=(a, h))["total"] == pytest.approx(sampler_prediction(s, LAM)["total"],
                                                                            rel=1e-12)


@pytest.mark.parametrize("scheme", ["em", "heun"])
def test_particles_match_the_exact_law(scheme):
    """Particles of the general chain (non-commuting A) against its exact covariance: every entry of the
    second moment within 4.5 measured standard errors."""
    d, M = 3, 40000
    s = VP(scheme=scheme, steps=20, eps=1e-2, particles=M)
    g = torch.Generator().manual_seed(2)
    A = (torch.eye(d, dtype=F64) + 0.3 * torch.randn(s.times.numel(), d, d, generator=g, dtype=F64)).unsqueeze(0)
    C = s.covariance(A)[0]
    x = s.chain.sample(A, torch.randn(1, M, d, generator=g, dtype=F64), g)[0]
    prod = x.unsqueeze(-1) * x.unsqueeze(-2)                             # (M, d, d)
    z = (prod.mean(0) - C) / (prod.std(0) / math.sqrt(M))
    assert z.abs().max() < 4.5


def _order(scheme, Ks, eps=1e-2):
    lam = torch.tensor([0.3, 0.7, 1.5, 3.0], dtype=F64)
    sch = VPSchedule()
    target = sch.marginal(lam, eps)           # exact law at ε from p_T, exact score
    errs = []
    for K in Ks:
        v = VP(scheme=scheme, steps=K, eps=eps, init="prior").spectral_variance(lam)
        errs.append(float(((v.sqrt() - target.sqrt()) ** 2).sum().sqrt()))
    return np.polyfit(np.log(Ks), np.log(errs), 1)[0]


@pytest.mark.parametrize("scheme,order", [("em", 1), ("ei", 1), ("ddpm", 1), ("euler", 1), ("heun", 2), ("rk4", 4)])
def test_convergence_orders(scheme, order):
    """W2(law_K, exact law at ε) ∝ K^(−p): measured slope within ±0.3 of p (exact score, init at p_T)."""
    Ks = [100, 200, 400, 800] if scheme != "rk4" else [50, 100, 200, 400]
    slope = -_order(scheme, Ks)
    assert abs(slope - order) <= 0.3, slope


def test_nfe_and_levels():
    assert VP(scheme="heun", steps=10).evaluations == 20
    s = VP(scheme="rk4", steps=None, nfe=50)
    assert (s.K, s.evaluations, s.times.numel()) == (12, 48, 25)
    assert VP(scheme="em", steps=10).times.numel() == 10
    assert VP(scheme="heun", steps=10).times.numel() == 11


@pytest.mark.parametrize("kw,msg", [({"scheme": "foo"}, "sampler.scheme must be one of"),
                                    ({"steps": 10, "nfe": 20}, "sampler.steps must be null when sampler.nfe is set"),
                                    ({"scheme": "ddpm", "steps": 10}, "sampler.steps must be large enough"),
                                    ({"eps": 1.0}, "sampler.eps must be in"),
                                    ({"init": "zero"}, "sampler.init must be one of"),
                                    ({"steps": 0}, "sampler.steps must be an integer >= 1")])
def test_bad_input_one_line_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        VP(**kw)


# ------------------------------------------------------------------------------------------ theory

def song_levels(t):
    """(α_t², s_t²) of the forward process at time t: e^{−2B_PG(t)}, 1 − e^{−2B_PG(t)} (Song's B = 2B_PG)."""
    e = math.exp(-2 * B_pg(t))
    return e, 1 - e


def nearest_level(times):
    """t ↦ the index of the score time nearest t: the level a stage evaluated at t reads."""
    return lambda t: min(range(len(times)), key=lambda l: abs(times[l] - t))


def scheme_law(scheme, A_at, K, eps, function=False):
    """C_K from C_0 = I through the update formulas (`_scheme_matrix`): C ← M C Mᵀ + q I. With `function`
    (every A_at(t) a function of one matrix, e.g. of a Jordan block) C ← M C M + q I: all factors commute,
    and no transpose keeps the matrix function of a non-symmetric argument."""
    steps = _scheme_matrix(scheme, A_at, K, eps)
    eye = torch.eye(steps[0][0].shape[-1], dtype=F64)
    C = eye
    for M, q in steps:
        C = M @ C @ (M if function else M.transpose(-1, -2)) + q * eye
    return C


def jordan_blocks(lam):
    """J_ij = [[λ_i, 1, 0], [0, λ_j, 1], [0, 0, λ_i]] (d, d, 3, 3): for any matrix function f,
    f(J_ij)[0, 1] = f^[1](λ_i, λ_j) and f(J_ij)[0, 2] = f^[2](λ_i, λ_j, λ_i) (Opitz)."""
    d = lam.numel()
    J = torch.zeros(d, d, 3, 3, dtype=F64)
    J[..., 0, 0] = J[..., 2, 2] = lam.view(d, 1)
    J[..., 1, 1] = lam.view(1, d)
    J[..., 0, 1] = J[..., 1, 2] = 1.0
    return J


def w2_diag(lam, h):
    return float(((lam.sqrt() - h.sqrt()) ** 2).sum())


@pytest.mark.parametrize("scheme", ["em", "heun", "rk4"])
def test_jet_divided_differences_match_opitz(scheme):
    """ChainLaw.divided_differences (series jets through the step map) against Opitz' formula: the output
    variance as a matrix function of the Jordan block J, through the update formulas with the scores
    (α_t²J + s_t²I)⁻¹ at every stage time, C_0 = I."""
    K, eps = 15, 1e-3
    s = VP(scheme=scheme, steps=K, eps=eps)
    al, st = s.noise_levels()
    lam = torch.cat([LAM, LAM[2:3] * (1 + 1e-6)])          # a near-repeated pair (Taylor branch)
    J, eye = jordan_blocks(lam), torch.eye(3, dtype=F64)

    def A_at(t):
        a2, s2 = song_levels(t)
        return torch.linalg.inv(a2 * J + s2 * eye)

    H = scheme_law(scheme, A_at, K, eps, function=True)
    H1r, H2r = H[..., 0, 1], H[..., 0, 2]
    H1, H2 = ChainLaw(s.chain, torch.ones_like(lam)).divided_differences(lam, DSM(), al, st)
    scale1, scale2 = H1r.abs().max(), H2r.abs().max()
    assert (H1 - H1r).abs().max() <= 1e-7 * scale1
    assert (H2 - H2r).abs().max() <= 1e-6 * scale2


@pytest.mark.parametrize("scheme,K", [("ei", 30), ("heun", 12), ("rk4", 6)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_tau_kernel_matches_autograd(scheme, K, symmetric):
    """ChainLaw.tau_cells (matrix jets through the step map) against ½ Σ Var ∂²B²/∂Δ² by forward-mode autograd
    through the update formulas (`second_order_contraction` on `scheme_law`), at the exact scores 1/σ_t(λ),
    with DSM's per-level stationary variances (symmetric: Δ_ij = Δ_ji, i.e. Cov(Δ_ij, Δ_ji) = Var)."""
    eps = 1e-2
    s = VP(scheme=scheme, steps=K, eps=eps)
    times = s.times.tolist()
    level = nearest_level(times)
    a = torch.stack([1 / sig(LAM, t) for t in times])
    al, st = s.noise_levels()
    var = DSM().fluctuations(LAM, al, st, 1.0, 2, None, symmetric)[0]
    got = ChainLaw(s.chain, 1.0).tau_cells(LAM, a, s.spectral_variance(LAM), var, None, symmetric).sum()
    cov_fn = lambda A: scheme_law(scheme, lambda t: A[..., level(t), :, :], K, eps)
    ref = second_order_contraction(cov_fn, a, LAM, var, var if symmetric else None).sum()
    assert abs(float(got - ref)) <= 1e-10 * abs(float(ref)), (float(got), float(ref))


@pytest.mark.parametrize("scheme", ["heun", "rk4"])
def test_tau_kernel_multistage_matches_monte_carlo(scheme):
    """Second-order expansion vs the exact law under random per-level perturbations Δ_l (variance τV_l),
    antithetic pairs ±Δ (odd orders cancel); within 3 measured s.e. plus 2% for the O(τ²) remainder."""
    from gsm.theory.bures import bures_wasserstein2
    lam = LAM[1:]
    s = VP(scheme=scheme, steps=8, eps=5e-2)
    al, st = s.noise_levels()
    a = exact_scores(lam, s.schedule, s.times)
    rho, W = bures_second_order_weights(lam, s.spectral_variance(lam))
    V = DSM().fluctuations(lam, al, st, 1.0, 1)[0]
    pred = float(chain_tau_kernel(s.chain, a, V, rho, W).sum())
    tau, S = 1e-4, 4000
    g = torch.Generator().manual_seed(3)
    D = torch.randn(S, *V.shape, generator=g, dtype=F64) * (tau * V).sqrt()
    A0 = torch.diag_embed(a)
    Sig = torch.diag(lam)
    b0 = bures_wasserstein2(Sig, s.chain.covariance(A0.unsqueeze(0))[0])
    vals = 0.5 * (bures_wasserstein2(Sig, s.chain.covariance(A0 + D)) + bures_wasserstein2(Sig, s.chain.covariance(A0 - D))) - b0
    mean, se = float(vals.mean()) / tau, float(vals.std() / math.sqrt(S)) / tau
    assert abs(mean - pred) <= 3 * se + 0.02 * abs(pred), (mean, se, pred)


# -------------------------------------------------------------------------------------- pipeline

FILE = ["threads=1", "progress=false", "sampler=vp", "sampler.particles=400", "data=file"]
BASE = [*FILE[:-1], "data.dim=5"]


def test_pipeline_oracle_records_nfe_and_exact_bias(compose_cfg, tmp_path):
    from gsm.pipeline.run import run
    res = run(compose_cfg(*BASE, "model=oracle", "replicates=2", "sampler.scheme=rk4", "sampler.nfe=100",
                          "sampler.steps=null", "figures=true"), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["nfe"] == 100 and saved["steps"] == 25 and saved["path"] == "spectral"
    assert abs(res["w2_exact"]["mean"] - res["w2_predicted"]) <= 1e-12
    assert (tmp_path / "figures" / "vp_trajectory_all_schemes.png").is_file()


@pytest.mark.parametrize("scheme,init", [("em", "normal"), ("heun", "prior")])
def test_pipeline_full_path_equals_spectral_path_for_the_oracle(compose_cfg, tmp_path, scheme, init):
    from gsm.pipeline.run import run
    over = [*BASE, "model=oracle", "replicates=2", f"sampler.scheme={scheme}", "sampler.steps=30", f"sampler.init={init}"]
    a = run(compose_cfg(*over), tmp_path / "a")
    b = run(compose_cfg(*over, "sampler.spectral=false", "figures=true"), tmp_path / "b")
    assert "path" not in b and b["nfe"] == a["nfe"] and (tmp_path / "b" / "figures" / "vp_trajectory_all_schemes.png").is_file()
    assert abs(a["w2_exact"]["mean"] - b["w2_exact"]["mean"]) <= 1e-10


@pytest.mark.parametrize("scheme,init,spectral", [("em", "normal", True), ("rk4", "prior", True),
                                                  ("heun", "normal", False)])
def test_learned_exact_solver_matches_prediction(compose_cfg, tmp_path, scheme, init, spectral):
    """train.solver=exact, N = 40d: measured W2² within 3 s.e. of bias + (1/N)ΣK_N (+2% model error)."""
    from gsm.pipeline.run import run
    R = 300 if spectral else 150
    res = run(compose_cfg(*BASE, "train.solver=exact", "data.n=200", f"replicates={R}", f"sampler.scheme={scheme}",
                          "sampler.steps=30", f"sampler.init={init}", f"sampler.spectral={str(spectral).lower()}"),
              tmp_path)
    m, se, pred = res["w2_exact"]["mean"], res["w2_exact"]["stderr"], res["w2_predicted"]
    assert abs(m - pred) <= 3 * se + 0.02 * pred, (m, se, pred)


def test_data_file_spectrum(compose_cfg, tmp_path):
    from gsm.pipeline.run import run
    lam = np.array([2.0, 1.0, 0.5, 0.0, -1e-12])
    np.save(tmp_path / "lam.npy", lam)
    (tmp_path / "lam.txt").write_text("2.0 1.0\n0.5 0.0\n")
    from gsm.data.gaussian import file_spectrum
    with pytest.warns(UserWarning, match="clamped to 0"):
        assert file_spectrum(tmp_path / "lam.npy")[-1] == 0
    res = run(compose_cfg(*FILE, f"data.path={tmp_path / 'lam.npy'}", "model=oracle",
                          "replicates=2", "sampler.eps=1e-3"), tmp_path / "run")
    assert res["status"] == "ok" and res["prediction_terms"]["truncation"] > 0
    assert all(math.isfinite(v) for v in res["prediction_terms"].values())
    assert file_spectrum(tmp_path / "lam.txt").tolist() == [2.0, 1.0, 0.5, 0.0]


def test_data_file_bad_path_and_singular_score_errors(compose_cfg, tmp_path):
    from gsm.pipeline.run import run
    from gsm.pipeline.validate import ConfigError
    with pytest.raises(ConfigError, match="^data.path must be an existing .npy or .txt file"):
        run(compose_cfg(*FILE, "data.path=/nonexistent.npy", "model=oracle"), tmp_path)
    np.save(tmp_path / "lam.npy", np.array([1.0, 0.0]))
    with pytest.raises(ConfigError, match="sampler.eps must be > 0 for scheme=heun"):
        run(compose_cfg(*FILE, f"data.path={tmp_path / 'lam.npy'}", "model=oracle",
                        "sampler.scheme=heun", "sampler.eps=0"), tmp_path / "b")


@pytest.mark.parametrize("scheme,init", [("ei", "zeros"), ("ei", "identity"), ("heun", "zeros"), ("rk4", "identity")])
def test_finite_budget_prediction_matches_reference(scheme, init):
    """A finite SGD budget, S steps from A₀ = a₀I, each sample at one of the L levels: the exact mean score
    E[A_l](Σ̂) = M⁻¹ + (a₀I − M⁻¹)(I − τs_l²M/L)^S, M = α_l²Σ̂ + s_l²I (written here), through the update
    formulas gives the mean offset, the 1/N term (Opitz' formula on E[A](J), the Bures weights at the mean
    law) and the τ term (autograd, with DSM's transient Var(Δ_ij) and Cov(Δ_ij, Δ_ji)): sampler_prediction
    equals them to 1e-10."""
    from gsm.training.objectives import SGDBudget
    K, eps, n, tau, b, S = 12, 5e-2, 500, 0.05, 4, 3000
    s = VP(scheme=scheme, steps=K, eps=eps)
    got = sampler_prediction(s, LAM, n=n, tau=tau, batch_size=b, sgd_steps=S, init=init)
    times = s.times.tolist()
    L, level, a0 = len(times), nearest_level(times), {"zeros": 0.0, "identity": 1.0}[init]

    def mean_score(X, l):
        a2, s2 = song_levels(times[l])
        eye = torch.eye(X.shape[-1], dtype=F64)
        M = a2 * X + s2 * eye
        inv = torch.linalg.inv(M)
        return inv + (a0 * eye - inv) @ torch.linalg.matrix_power(eye - tau * s2 / L * M, S)

    law = lambda score, **kw: scheme_law(scheme, lambda t: score(level(t)), K, eps, **kw)
    Sig = torch.diag(LAM)
    h_star = law(lambda l: torch.linalg.inv(song_levels(times[l])[0] * Sig
                                            + song_levels(times[l])[1] * torch.eye(5, dtype=F64))).diagonal()
    h_bar = law(lambda l: mean_score(Sig, l)).diagonal()
    bias = w2_diag(LAM, h_star)
    offset = w2_diag(LAM, h_bar) - bias
    H = law(lambda l: mean_score(jordan_blocks(LAM), l), function=True)
    rho, W = bures_second_order_weights(LAM, h_bar)
    generalization = float(kernel_n(LAM, H[..., 0, 1], H[..., 0, 2], rho, W).sum()) / n
    al, st = s.noise_levels()
    var, cross = DSM().fluctuations(LAM, al, st, tau, b, SGDBudget(S, tau, b, init))
    a_bar = torch.stack([mean_score(Sig, l).diagonal() for l in range(L)])
    tau_part = float(second_order_contraction(lambda A: law(lambda l: A[..., l, :, :]), a_bar, LAM, var, cross).sum())
    ref = {"generalization": generalization, "sgd_mean_offset": offset, "optimization": offset + tau_part,
           "total": bias + generalization + offset + tau_part}
    assert got["modelled"]["sgd_budget"] is True and tau_part > 0.01 * offset > 0     # both parts resolved
    for k in ("generalization", "sgd_mean_offset", "optimization", "total"):
        assert abs(got[k] - ref[k]) <= 1e-10 * abs(ref[k]), (k, got[k], ref[k])


@pytest.mark.slow
@pytest.mark.parametrize("scheme,steps", [("heun", 5000), ("rk4", 300)])
def test_sgd_pipeline_matches_prediction(compose_cfg, tmp_path, scheme, steps):
    """DSM-SGD at every level a multi-stage scheme reads (heun: 5 levels, rk4: 9), τ = 0.1, b = 32, N = 2·10⁴:
    w2_exact within 3 s.e. (+3 %) of bias + τ term (stationary: heun, ~30 relaxation times) or of the
    finite-budget prediction (rk4: 300 SGD steps, ~2 relaxation times: mean offset + transient)."""
    from gsm.pipeline.run import run
    res = run(compose_cfg("threads=1", "progress=false", "sampler=vp", f"sampler.scheme={scheme}", "sampler.steps=4",
                          "sampler.eps=0.2", "data=custom", "data.dim=4", "data.spectrum.eigenvalues=[0.8,0.9,1.1,1.25]",
                          "data.n=20000", "train.tau=0.1", "train.batch_size=32", f"train.steps={steps}",
                          "replicates=128", "sampler.particles=200", "dtype=float64"), tmp_path)
    m, se, pred = res["w2_exact"]["mean"], res["w2_exact"]["stderr"], res["w2_predicted"]
    assert res["prediction_terms"]["optimization"] > 0.3 * pred
    assert abs(m - pred) <= 3 * se + 0.03 * pred, (m, se, pred)


def test_pg_table_sweep_and_report(tmp_path):
    """+experiment=pg_table through the CLI (2 jobs), then gsm-report writes the P–G table (md, csv, tex)."""
    import subprocess
    import sys
    from gsm.cli.report import main as report_main
    proc = subprocess.run([sys.executable, "-m", "gsm", "-m", "+experiment=pg_table", "data.dim=4", "replicates=2",
                           "sampler.scheme=em,rk4", "sampler.nfe=50", "sampler.eps=1e-3", "sampler.init=normal",
                           "sampler.particles=50", f"hydra.sweep.dir={tmp_path}"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert report_main([str(tmp_path), "--no-tensorboard"]) == 0
    md = (tmp_path / "pg_table.md").read_text()
    assert "| rk4 | 48 |" in md and "| em | 50 |" in md
    assert (tmp_path / "pg_table.tex").read_text().count(r"\begin{tabular}") == 1
    rows = (tmp_path / "pg_table.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("job,scheme,init,eps,nfe_budget,nfe,steps")


def test_pg_table_data_file_takes_d_from_the_file(compose_cfg, tmp_path):
    """The preset as documented, +experiment=pg_table data=file data.path=…: d is the file's length (the
    preset's data.dim: 64 is ignored with a warning); the cell equals the plain data=file run."""
    import subprocess
    import sys
    from gsm.pipeline.run import run
    np.save(tmp_path / "lam.npy", np.linspace(0.1, 2.0, 6))
    cell = ["sampler.scheme=em", "sampler.nfe=50", "sampler.eps=1e-3", "sampler.init=normal", "replicates=1",
            "sampler.particles=20"]
    proc = subprocess.run([sys.executable, "-m", "gsm", "+experiment=pg_table", "data=file",
                           f"data.path={tmp_path / 'lam.npy'}", *cell, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data.dim=64 ignored: data=file takes d = 6" in proc.stderr
    saved = json.loads((tmp_path / "sweep" / "0" / "results.json").read_text())
    ref = run(compose_cfg(*FILE, f"data.path={tmp_path / 'lam.npy'}", "model=oracle", "threads=1",
                          *cell, "sampler.steps=null"), tmp_path / "ref")
    assert abs(saved["w2_exact"]["mean"] - ref["w2_exact"]["mean"]) <= 1e-12 * ref["w2_exact"]["mean"]


@pytest.mark.parametrize("scheme", ["ddpm", "rk4"])
def test_diagonal_particles_match_the_per_eigenvalue_law(scheme):
    """The per-eigenvalue particle chain (spectral path) against `variance`: within 4.5 measured s.e."""
    M = 40000
    s = VP(scheme=scheme, steps=30, eps=1e-3, init="prior")
    a = exact_scores(LAM, s.schedule, s.times)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(M, LAM.numel(), generator=g, dtype=F64) * s.schedule.marginal(LAM, T).sqrt()
    x = s.chain.sample_diagonal(a, x0, g)
    v = s.spectral_variance(LAM)
    z = ((x ** 2).mean(0) - v) / ((x ** 2).std(0) / math.sqrt(M))
    assert z.abs().max() < 4.5
