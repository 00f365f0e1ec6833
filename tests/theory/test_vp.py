"""sampler=vp (Pierret–Galerne VP schemes): exact laws, particles, convergence orders, prediction.

The references are written here from the paper's equations in *its* convention (β_PG = β/2, B_PG = B/2,
N = K + 1 grid points t_k = (T − ε)k/(N − 1), times T − t_k), independently of gsm.samplers.vp and gsm.theory.vp."""
import json
import math

import numpy as np
import pytest
import torch

from gsm.samplers.linear_chain import DIAG, FULL
from gsm.theory.linear_chain import chain_tau_kernel, opitz_divided_differences
from gsm.samplers.vp_schemes import SCHEMES, VPSchedule, exact_scores
from gsm.samplers.vp import VP
from gsm.theory.vp import output_divided_differences, spectral_output_variance, vp_prediction

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
    got = spectral_output_variance(s, LAM)
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
        v = spectral_output_variance(VP(scheme=scheme, steps=K, eps=eps, init="prior"), lam)
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

@pytest.mark.parametrize("scheme", ["em", "heun", "rk4"])
def test_jet_divided_differences_match_opitz(scheme):
    s = VP(scheme=scheme, steps=15, eps=1e-3)
    al, st = s.noise_levels()
    lam = torch.cat([LAM, LAM[2:3] * (1 + 1e-6)])          # a near-repeated pair (Taylor branch)

    def h_on_matrix(J):
        eye = torch.eye(3, dtype=F64).expand_as(J)
        A = torch.stack([torch.linalg.inv(a * a * J + t * t * eye) for a, t in zip(al.tolist(), st.tolist())], -3)
        C = eye.clone()
        for k in range(s.chain.K):
            M = s.chain.matrices(k, A, FULL)
            C = M @ M @ C + float(s.chain.q[k]) * eye
        return C

    _, H1r, H2r = opitz_divided_differences(h_on_matrix, lam)
    H1, H2 = output_divided_differences(s.chain, lam, al ** 2, st ** 2, torch.ones_like(lam))
    scale1, scale2 = H1r.abs().max(), H2r.abs().max()
    assert (H1 - H1r).abs().max() <= 1e-7 * scale1
    assert (H2 - H2r).abs().max() <= 1e-6 * scale2


def one_stage_reverse_chain(s):
    """The VP sampler's one-stage chain (steps M = cI − gA) as a gsm.samplers.reverse_chain.ReverseChain on the same
    ᾱ grid, read off its steps at a = 0 (c) and a = 1 (c − g)."""
    from gsm.samplers.reverse_chain import ReverseChain
    K = s.K
    one, zero = torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64)
    c = torch.stack([s.chain.step_fns[k](lambda l: zero, DIAG)[0] for k in range(K)])
    g = c - torch.stack([s.chain.step_fns[k](lambda l: one, DIAG)[0] for k in range(K)])
    ab = torch.cat([torch.tensor([math.exp(-s.schedule.B(s.eps))], dtype=F64), torch.exp(-s.schedule.B(s.times.flip(0)))])
    return ReverseChain(ab, torch.cat([one, c.flip(0)]), torch.cat([zero, g.flip(0)]), torch.cat([zero, s.chain.q.flip(0)]),
                        torch.arange(1, K + 1))


@pytest.mark.parametrize("symmetric", [False, True])
def test_tau_kernel_one_stage_matches_ddpm_kernel(symmetric):
    """For one-stage steps M = cI − gA the generic kernel is gsm.theory.diffusion.ddpm_tau_kernel (independent code)."""
    from gsm.theory.diffusion import ddpm_tau_kernel
    from gsm.theory.sgd import level_sgd_variance
    from gsm.theory.langevin import bures_second_order_weights
    s = VP(scheme="ei", steps=30, eps=1e-2)
    rc = one_stage_reverse_chain(s)
    ref = ddpm_tau_kernel(LAM, rc, 1, 1.0, symmetric).sum()
    al, _ = s.noise_levels()
    rho, W = bures_second_order_weights(LAM, spectral_output_variance(s, LAM))
    V = level_sgd_variance(LAM, al ** 2, 1, symmetric)
    got = chain_tau_kernel(s.chain, exact_scores(LAM, s.schedule, s.times), V, rho, W, 1.0, symmetric).sum()
    assert abs(float(got - ref)) <= 1e-10 * abs(float(ref))


@pytest.mark.parametrize("scheme", ["heun", "rk4"])
def test_tau_kernel_multistage_matches_monte_carlo(scheme):
    """Second-order expansion vs the exact law under random per-level perturbations Δ_l (variance τV_l),
    antithetic pairs ±Δ (odd orders cancel); within 3 measured s.e. plus 2% for the O(τ²) remainder."""
    from gsm.theory.sgd import level_sgd_variance
    from gsm.theory.bures import bures_wasserstein2
    from gsm.theory.langevin import bures_second_order_weights
    lam = LAM[1:]
    d = lam.numel()
    s = VP(scheme=scheme, steps=8, eps=5e-2)
    al, _ = s.noise_levels()
    a = exact_scores(lam, s.schedule, s.times)
    rho, W = bures_second_order_weights(lam, spectral_output_variance(s, lam))
    V = level_sgd_variance(lam, al ** 2, 1)
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
                          "sampler.steps=null"), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["nfe"] == 100 and saved["steps"] == 25 and saved["path"] == "spectral"
    assert abs(res["w2_exact"]["mean"] - res["w2_predicted"]) <= 1e-12
    assert (tmp_path / "figures" / "vp_trajectory_all_schemes.png").is_file()


@pytest.mark.parametrize("scheme,init", [("em", "normal"), ("heun", "prior")])
def test_pipeline_full_path_equals_spectral_path_for_the_oracle(compose_cfg, tmp_path, scheme, init):
    from gsm.pipeline.run import run
    over = [*BASE, "model=oracle", "replicates=2", f"sampler.scheme={scheme}", "sampler.steps=30", f"sampler.init={init}"]
    a = run(compose_cfg(*over), tmp_path / "a")
    b = run(compose_cfg(*over, "sampler.spectral=false"), tmp_path / "b")
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


@pytest.mark.parametrize("init", ["zeros", "identity"])
def test_finite_budget_one_stage_matches_diffusion_prediction(init):
    """A finite SGD budget (mean offset, transient τ term with Cov(Δ_ij, Δ_ji), mean score inside the 1/N term):
    for a one-stage scheme vp_prediction equals gsm.theory.diffusion.diffusion_prediction on the same chain."""
    from gsm.theory.diffusion import diffusion_prediction
    s = VP(scheme="ei", steps=12, eps=5e-2)
    rc = one_stage_reverse_chain(s)
    kw = dict(n=500, tau=0.05, batch_size=4, sgd_steps=3000, init=init)
    ref, got = diffusion_prediction(LAM, rc, **kw), vp_prediction(LAM, s, **kw)
    for k in ("generalization", "sgd_mean_offset", "optimization", "total"):
        assert abs(got[k] - ref[k]) <= 1e-10 * abs(ref[k]), k


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


@pytest.mark.parametrize("scheme", ["ddpm", "rk4"])
def test_diagonal_particles_match_the_per_eigenvalue_law(scheme):
    """The per-eigenvalue particle chain (spectral path) against `variance`: within 4.5 measured s.e."""
    M = 40000
    s = VP(scheme=scheme, steps=30, eps=1e-3, init="prior")
    a = exact_scores(LAM, s.schedule, s.times)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(M, LAM.numel(), generator=g, dtype=F64) * s.schedule.marginal(LAM, T).sqrt()
    x = s.chain.sample_diagonal(a, x0, g)
    v = spectral_output_variance(s, LAM)
    z = ((x ** 2).mean(0) - v) / ((x ** 2).std(0) / math.sqrt(M))
    assert z.abs().max() < 4.5
