"""Benchmarks: each gsm path against what a researcher writes by hand, and against the machine's limit.

    python -m gsm.bench                  # the full suite (≈ 3–4 min on 2 CPU cores)
    python -m gsm.bench --device cuda    # the same sizes on a GPU
    python -m gsm.bench --smoke          # tiny sizes, seconds (CI): checks that every ratio prints
    python -m gsm.bench --only readme    # the README tour's commands: rewrites its table of times
    python -m gsm.bench --only readme --dry-run     # lists those commands
    python -m gsm.bench --only startup   # a tiny run's wall seconds against the bare imports (subprocesses)
    python -m gsm.bench --write-docs     # also writes each benchmark's figures into docs/performance.md

Every figure is a median over repeats measured in this process; ratios compare numbers from the
same run. The baselines (issue 7): one replicate at a time, the reference DSM-SGD loop
(`gsm.training.reference`, one step on a single sample at a time), Langevin on particles,
`scipy.linalg.sqrtm` for the distance.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time

import torch

from gsm.cli import bench_docs
from gsm.samplers.langevin import langevin_covariance, langevin_sample, linear_langevin_sample
from gsm.theory.bures import bures_wasserstein2
from gsm.training.dsm import train_linear_dsm
from gsm.training.reference import reference_linear_dsm

FULL = dict(sgd_d=64, sgd_R=256, sgd_steps=2048, loop_reps=2, loop_steps=300,
            lang_d=256, lang_M=10_000, lang_steps=20, bw_d=1024, law_d=256, law_T=1000,
            e2e_d=32, e2e_R=64, e2e_n=(160, 320, 640, 1280, 2560, 5120), e2e_chains_runs=1,
            e2e_loop_reps=2, e2e_loop_steps=2000, repeat=5, vp_d=3072, vp_K=1000, vp_exact_R=2)
SMOKE = dict(sgd_d=8, sgd_R=4, sgd_steps=20, loop_reps=1, loop_steps=10,
             lang_d=8, lang_M=50, lang_steps=3, bw_d=16, law_d=8, law_T=20,
             e2e_d=4, e2e_R=4, e2e_n=(20, 40), e2e_chains_runs=1,
             e2e_loop_reps=1, e2e_loop_steps=20, repeat=2,
             e2e_overrides=("train.steps=200", "sampler.steps=20", "sampler.particles=50"),
             vp_d=16, vp_K=30, vp_exact_R=2,
             run_overrides=("figures=false",))    # smoke (CI): drawing was most of these tiny runs' seconds


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, repeat: int = 5, device="cpu", warmup: int = 1) -> float:
    """Median wall time of fn() in seconds, over `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_bandwidth(nbytes: int, device="cpu", repeat: int = 9) -> float:
    """Bytes per second of dst.copy_(src) (read + write counted) for buffers of `nbytes`."""
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median_time(lambda: dst.copy_(src), repeat, device, warmup=2)


def _stable_nonsymmetric(d, device, dtype, seed=0, spread=0.3):
    """A = I + spread·G/√d: non-symmetric, eigenvalues in a disc around 1 (ULA-stable for γ ≲ 1)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.eye(d, dtype=torch.float64) + spread * torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return A.to(device, dtype)


# ------------------------------------------------------------------------------------- baselines

def loop_dsm_sgd(x: torch.Tensor, sigma: float, tau: float, steps: int, generator=None) -> torch.Tensor:
    """The baseline for one replicate: the reference loop (`gsm.training.reference`, one SGD step at a time
    on single samples, loss ½‖σ A(x + σz) − z‖²) from A = 0. x: (N, d) → A (d, d)."""
    d = x.shape[1]
    A = torch.zeros(1, 1, d, d, dtype=x.dtype)
    one, sig = torch.ones(1, dtype=torch.float64), torch.full((1,), sigma, dtype=torch.float64)
    return reference_linear_dsm(A, x[None], alphas=one, stds=sig, tau=tau, steps=steps, generator=generator)[0, 0]


def scipy_bures2(S1, S2) -> float:
    """B² by hand with scipy.linalg.sqrtm (Schur-based), numpy float64."""
    from scipy.linalg import sqrtm
    R = sqrtm(S1).real
    return float(S1.trace() + S2.trace() - 2 * sqrtm(R @ S2 @ R).real.trace())


# ------------------------------------------------------------------------------------ benchmarks

def bench_dsm_sgd(p, device="cpu"):
    """(1) DSM-SGD, b = 1, float32: replicate-steps/s of gsm vs the loop and vs the memory bound."""
    d, R, S, N, sigma, tau = p["sgd_d"], p["sgd_R"], p["sgd_steps"], 1000, 0.5, 0.005
    if torch.device(device).type == "cuda":
        S *= 16                                           # amortise the CUDA graph's capture
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(R, N, d, device=device, generator=g)
    A = torch.zeros(R, 1, d, d, device=device)
    one, sig = torch.ones(1, dtype=torch.float64), torch.full((1,), sigma, dtype=torch.float64)
    t = median_time(lambda: train_linear_dsm(A.zero_(), x, alphas=one, stds=sig, tau=tau, steps=S, generator=g),
                    p["repeat"], device)
    gsm_rate = R * S / t
    xc = x[0, :, :].cpu()
    t_loop = median_time(lambda: loop_dsm_sgd(xc, sigma, tau, p["loop_steps"]), p["loop_reps"], "cpu")
    loop_rate = p["loop_steps"] / t_loop
    # A lower bound on any implementation: each sample's d noise numbers must be drawn (torch.randn is one
    # thread), and each sample costs ≥ 4d² flops (the residual A y and the rank-1 update, 2d² each) at
    # the fp32 GEMM rate of a large product. Drawn on a second core they may overlap: the bound is the
    # larger of the two. (A once per step is no bound: the blocked steps touch A once per 16 samples.)
    z = torch.empty(R * S * d, device=device)
    t_randn = median_time(lambda: torch.randn(z.shape, generator=g, device=device, out=z), p["repeat"], device)
    flops_rate = gemm_rate(device, torch.float32)
    t_bound = max(t_randn, R * S * 4 * d * d / flops_rate)
    return {"gsm replicate-steps/s": gsm_rate, "loop replicate-steps/s": loop_rate,
            "bound replicate-steps/s": R * S / t_bound, "randn s (bound)": t_randn,
            "fp32 GEMM GFLOP/s": flops_rate / 1e9, "× loop": gsm_rate / loop_rate,
            "fraction of randn/flop bound": t_bound / t}


def gemm_rate(device, dtype, n: int = 1024) -> float:
    """Flop/s of one n×n product (the machine's best case for the threads torch uses)."""
    X = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / median_time(lambda: X @ X, 5, device)


def bench_langevin(p, device="cpu"):
    """(2) ULA, float32, one replicate of M particles: particle-steps/s vs torch.randn of the same noise."""
    d, M, K = p["lang_d"], p["lang_M"], p["lang_steps"]
    g = torch.Generator(device).manual_seed(0)
    A = _stable_nonsymmetric(d, device, torch.float32)[None]
    x0 = torch.randn(1, M, d, device=device, generator=g)
    gamma = 0.05
    t = median_time(lambda: linear_langevin_sample(A, x0, gamma, K, g), p["repeat"], device)
    t_hand = median_time(lambda: langevin_sample(lambda y: -y @ A.transpose(-1, -2), x0, gamma, K, g),
                         p["repeat"], device)
    buf = torch.empty_like(x0)
    t_randn = median_time(lambda: torch.randn(x0.shape, generator=g, device=device, out=buf), 3 * p["repeat"], device)
    Pt = torch.eye(d, device=device) - gamma * A.transpose(-1, -2)
    t_mm = median_time(lambda: torch.bmm(x0, Pt, out=buf), 3 * p["repeat"], device)
    rate, bound = M * K / t, M / t_randn
    # randn and the product may run on two cores at once (gsm.training.prefetch): the larger one bounds a step
    return {"gsm particle-steps/s": rate, "randn bound particle-steps/s": bound,
            "fraction of randn bound": rate / bound, "× hand-written step": t_hand / t,
            "matmul share of a step": t_mm / (t / K),
            "fraction of max(randn, matmul) bound": max(t_randn, t_mm) / (t / K)}


def bench_bures(p, device="cpu"):
    """(3) B² at float64 between two random full-rank covariances: gsm vs POT vs scipy sqrtm."""
    import numpy as np
    import ot
    d = p["bw_d"]
    g = torch.Generator().manual_seed(0)
    G1, G2 = (torch.randn(d, d, generator=g, dtype=torch.float64) for _ in range(2))
    S1, S2 = G1 @ G1.T / d + 0.1 * torch.eye(d, dtype=torch.float64), G2 @ G2.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    T1, T2 = S1.to(device), S2.to(device)
    n1, n2, m = S1.numpy(), S2.numpy(), np.zeros(d)
    rep = max(1, p["repeat"] // 2)
    t_gsm = median_time(lambda: bures_wasserstein2(T1, T2), rep, device)
    t_pot = median_time(lambda: ot.gaussian.bures_wasserstein_distance(m, m, n1, n2), rep)
    sp = []
    t_sp = median_time(lambda: sp.append(scipy_bures2(n1, n2)), 1, warmup=0)   # seconds at d = 1024: once
    b_gsm = float(bures_wasserstein2(T1, T2))
    b_pot = float(ot.gaussian.bures_wasserstein_distance(m, m, n1, n2)) ** 2   # POT returns W2, not W2²
    b_sp = sp[0]
    return {"gsm s": t_gsm, "POT s": t_pot, "scipy sqrtm s": t_sp, "× POT": t_pot / t_gsm,
            "× scipy": t_sp / t_gsm, "rel. diff vs POT": abs(b_gsm - b_pot) / abs(b_pot),
            "rel. diff vs scipy": abs(b_gsm - b_sp) / abs(b_sp)}


def bench_exact_laws(p, device="cpu"):
    """(4) Exact sampler laws at float64: the ULA stationary covariance for a non-symmetric A, and the
    DDPM output law for T levels of non-commuting score matrices. Bound: the same count of d×d
    float64 products at the GEMM rate measured here."""
    d, T = p["law_d"], p["law_T"]
    A = _stable_nonsymmetric(d, device, torch.float64)
    X = torch.randn(d, d, dtype=torch.float64, device=device)
    t_mm = median_time(lambda: X @ X, 2 * p["repeat"], device)
    t_lyap = median_time(lambda: langevin_covariance(A, 0.05), p["repeat"], device)
    out = {"Langevin stationary s": t_lyap}
    try:
        from scipy.linalg import solve_discrete_lyapunov
        P = (torch.eye(d, dtype=torch.float64) - 0.05 * A.cpu()).numpy()
        Q = 0.1 * torch.eye(d, dtype=torch.float64).numpy()
        t_sp = median_time(lambda: solve_discrete_lyapunov(P, Q), 1)
        C, C_sp = langevin_covariance(A, 0.05).cpu(), torch.from_numpy(solve_discrete_lyapunov(P, Q))
        out.update({"scipy solve_discrete_lyapunov s": t_sp, "× scipy lyapunov": t_sp / t_lyap,
                    "rel. diff vs scipy lyapunov": float((C - C_sp).norm() / C_sp.norm())})
    except ImportError:
        pass
    from gsm.samplers.reverse_chain import alphas_cumprod, ddpm_chain, exact_score_matrices, linear_beta_schedule
    from gsm.training.objectives import DSM
    scaled = T > 20
    ab = alphas_cumprod(linear_beta_schedule(T, scaled=scaled))
    chain = ddpm_chain(ab).linear_chain()                                 # reads the levels ᾱ_1..ᾱ_T
    lam = 1.0 / torch.arange(1, d + 1, dtype=torch.float64)
    As = exact_score_matrices(torch.diag(lam).to(device), ab[1:])        # (T, d, d)
    As = As + 0.01 * A / math.sqrt(d)                                     # non-commuting, non-symmetric
    t_ddpm = median_time(lambda: chain.covariance(As), max(1, p["repeat"] // 2), device)
    a = DSM().target(lam, ab[1:].sqrt(), (1 - ab[1:]).sqrt())             # (T, d): O(T d), on the CPU
    t_eig = median_time(lambda: chain.variance(a), p["repeat"])
    out.update({"DDPM exact law s": t_ddpm, "DDPM GEMM bound s": 2 * (T + 1) * t_mm,
                "fraction of GEMM bound": 2 * (T + 1) * t_mm / t_ddpm,
                "DDPM eigenbasis (commuting) s": t_eig})
    return out


def _e2e_cfgs(p, extra=()):
    from hydra import compose, initialize_config_module
    base = [f"data.dim={p['e2e_d']}", f"replicates={p['e2e_R']}", "progress=false", *p.get("e2e_overrides", ()),
            *p.get("run_overrides", ()), *extra]
    with initialize_config_module(version_base="1.3", config_module="gsm.conf"):
        return [compose(config_name="config", overrides=base + [f"data.n={n}"]) for n in p["e2e_n"]]


def bench_end_to_end(p, device="cpu"):
    """(5) The vs_n study (len(N) values × R replicates at d, the pipeline's defaults otherwise), run by
    gsm.pipeline.run.run one job after another in this process; against the hand-written loop for the
    same work, extrapolated from `e2e_loop_reps` replicates × `e2e_loop_steps` SGD steps (+ one
    replicate's particles), since the whole loop would take tens of minutes."""
    import numpy as np
    from hydra.utils import instantiate

    from gsm.data.gaussian import make_gaussian
    from gsm.pipeline.run import run

    def study(cfgs):
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            for i, cfg in enumerate(cfgs):
                cfg.device = device
                run(cfg, f"{tmp}/{i}")
        return time.perf_counter() - t

    law = _e2e_cfgs(p, ["sampler.particles_from=law"])
    t_law = study(law)
    chains = _e2e_cfgs(p)
    runs = p["e2e_chains_runs"]
    t_chains = study(chains[:runs]) * len(chains) / runs

    # the loop, per replicate: SGD steps, M ULA chains for K steps, scipy sqrtm distance
    cfg = chains[0]
    d, R, steps = cfg.data.dim, cfg.replicates, cfg.train.steps
    target = make_gaussian(instantiate(cfg.data.spectrum), cfg.data.basis, cfg.seed)
    x = target.sample((cfg.data.n,)).float()
    ls = p["e2e_loop_steps"]
    t_sgd = median_time(lambda: loop_dsm_sgd(x, cfg.train.sigma, cfg.train.tau, ls), p["e2e_loop_reps"], warmup=0)
    A = torch.eye(d) / (1 + cfg.train.sigma ** 2)
    x0 = torch.randn(cfg.sampler.particles, d)
    t_lang = median_time(lambda: langevin_sample(lambda y: -y @ A.T, x0, cfg.sampler.gamma, cfg.sampler.steps), 1, warmup=0)
    S = target.covariance.numpy()
    t_dist = median_time(lambda: scipy_bures2(S, np.cov(x0.T.double().numpy())), 1, warmup=0)
    per_rep = t_sgd * steps / ls + t_lang + t_dist
    t_loop = per_rep * R * len(chains)
    return {"gsm study s (particles from the exact law)": t_law, "gsm study s (ULA chains)": t_chains,
            "loop study s (extrapolated)": t_loop, "× loop (law)": t_loop / t_law,
            "× loop (chains)": t_loop / t_chains,
            "note": f"ULA-chain time extrapolated from {runs} of {len(chains)} runs; loop time from "
                    f"{p['e2e_loop_reps']}×{ls} SGD steps, one replicate's chains and one sqrtm distance, "
                    f"× {steps} steps, {R} replicates, {len(chains)} values of N"}


def numpy_vp_variance(scheme, lam, beta_min, beta_max, T, eps, K, v0=1.0):
    """The hand-written baseline of bench_vp: a scheme's output variance per eigenvalue, vectorised over λ (d,)
    in plain numpy, written from docs/vp.md (not through gsm's chains). Grid t_k = T − k(T − ε)/K, h = t_k − t_{k+1},
    B(t) = β_min t + ½(β_max − β_min)t², σ_t(λ) = e^{−B}λ + 1 − e^{−B}, exact score a_t = 1/σ_t; each step
    v ← m² v + q with em m = 1 + b/2 − b a, q = b (b = hβ(t_k)); ei m = e^{ΔB/2} − 2(e^{ΔB/2} − 1)a, q = e^{ΔB} − 1;
    ddpm m = (1 − b a)/√(1 − b), q = b; the flow-ODE schemes integrate y′ = G(t) y backward, G = ½β(1 − a),
    q = 0 (euler m = 1 + hG₀; heun m = 1 + h(G₀ + G₁(1 + hG₀))/2; rk4 the classical stages at t_k, t_k − h/2,
    t_{k+1})."""
    import numpy as np

    beta = lambda t: beta_min + t * (beta_max - beta_min)                  # noqa: E731
    B = lambda t: beta_min * t + 0.5 * (beta_max - beta_min) * t * t       # noqa: E731
    G = lambda t: 0.5 * beta(t) * (1.0 - 1.0 / (np.exp(-B(t)) * lam + 1.0 - np.exp(-B(t))))   # noqa: E731
    t = np.linspace(T, eps, K + 1)
    v = np.full_like(lam, v0) if np.ndim(v0) == 0 else np.array(v0, dtype=np.float64)
    for k in range(K):
        t0, t1 = t[k], t[k + 1]
        h, q = t0 - t1, 0.0
        if scheme in ("em", "ei", "ddpm"):
            a, b = 1.0 / (np.exp(-B(t0)) * lam + 1.0 - np.exp(-B(t0))), h * beta(t0)
            if scheme == "em":
                m, q = 1.0 + 0.5 * b - b * a, b
            elif scheme == "ei":
                e = math.exp(0.5 * (B(t0) - B(t1)))
                m, q = e - 2.0 * (e - 1.0) * a, e * e - 1.0
            else:
                m, q = (1.0 - b * a) / math.sqrt(1.0 - b), b
        elif scheme == "euler":
            m = 1.0 + h * G(t0)
        elif scheme == "heun":
            g0 = G(t0)
            m = 1.0 + 0.5 * h * (g0 + G(t1) * (1.0 + h * g0))
        else:
            gm = G(0.5 * (t0 + t1))
            k1 = G(t0)
            k2 = gm * (1.0 + 0.5 * h * k1)
            k3 = gm * (1.0 + 0.5 * h * k2)
            k4 = G(t1) * (1.0 + h * k3)
            m = 1.0 + h * (k1 + 2.0 * k2 + 2.0 * k3 + k4) / 6.0
        v = m * m * v + q
    return v


def _numpy_vp_rows(scheme, lam, s, K, res, repeat) -> dict:
    """bench_vp's rows against `numpy_vp_variance` (init=normal: v₀ = 1) for one gsm run's results `res`."""
    import numpy as np

    args = (scheme, lam, s.beta_min, s.beta_max, s.T, s.eps, K)
    v = numpy_vp_variance(*args)
    w2 = float(((np.sqrt(lam) - np.sqrt(np.maximum(v, 0.0))) ** 2).sum())
    t_np = median_time(lambda: numpy_vp_variance(*args), repeat=repeat)
    return {f"  numpy {scheme} s": t_np,
            f"  {scheme} W2² rel. diff gsm vs numpy": abs(res["w2_exact"]["mean"] - w2) / w2,
            f"  {scheme} gsm run (prediction incl.) / numpy": res["seconds"] / t_np}


VP_RUNS = 3     # bench_vp: gsm's seconds per scheme are the median of this many runs (numpy's: of `repeat`)


def bench_vp(p, device="cpu"):
    """(6) sampler=vp at image scale (issue 15): `data=file` with d = vp_d eigenvalues (λ_i = 0.3 i^−1.3, the
    last 16 zero), K = vp_K steps, through gsm.pipeline.run.run (the per-eigenvalue path): model=oracle for
    every scheme (R = 1, no particles, no figure: the exact law and the prediction), the same with M = 2000
    particles from the law, and train.solver=exact with R = vp_exact_R, N = 5d (Wishart Σ̂ by Bartlett,
    one eigendecomposition + one Bures eigvalsh per replicate, the 1/N term), also extrapolated to R = 16.
    Wall seconds of the run (results.json `seconds`: the law and the prediction; median of VP_RUNS runs, the
    1-minute load average before them in the row's name), imports excluded (a warm-up run first). Baseline per chain scheme (issue 26): `numpy_vp_variance`, its W2² against w2_exact and the
    ratio gsm run / numpy (the numpy side computes the law only: no prediction)."""
    import numpy as np
    from hydra import compose, initialize_config_module

    from gsm.pipeline.run import run

    d, K = p["vp_d"], p["vp_K"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        lam = 0.3 * np.arange(1, d + 1, dtype=np.float64) ** -1.3
        lam[-min(16, d // 4):] = 0.0
        np.save(f"{tmp}/lam.npy", lam)

        def once(name, *over):
            with initialize_config_module(version_base="1.3", config_module="gsm.conf"):
                cfg = compose(config_name="config", overrides=[
                    "sampler=vp", "data=file", f"data.path={tmp}/lam.npy", "progress=false", f"sampler.steps={K}",
                    "sampler.eps=1e-3", *p.get("run_overrides", ()), *over])
            cfg.device = device
            return run(cfg, f"{tmp}/{name}"), cfg.sampler

        once("warmup", "model=oracle", "replicates=1", "sampler.steps=2", "sampler.particles_from=none")
        for sc in ("em", "ei", "ddpm", "euler", "heun", "rk4", "sde", "ode"):
            avg = os.getloadavg()[0]
            runs = [once(f"{sc}{i}", "model=oracle", "replicates=1", f"sampler.scheme={sc}",
                         "sampler.particles_from=none", "sampler.figure=false") for i in range(VP_RUNS)]
            res, s = runs[0][0], runs[0][1]
            res = {**res, "seconds": statistics.median(r["seconds"] for r, _ in runs)}
            out[f"oracle {sc} s (d={d}, K={K}, load {avg:.1f})"] = res["seconds"]
            if sc not in ("sde", "ode"):
                out.update(_numpy_vp_rows(sc, lam, s, K, res, p["repeat"]))
        out["oracle rk4 + 2000 particles (law) + figure s"] = once(
            "rk4p", "model=oracle", "replicates=1", "sampler.scheme=rk4", "sampler.particles_from=law")[0]["seconds"]
        R = p["vp_exact_R"]     # replicates cost the same: R = 16 is extrapolated from R (the run's own seconds)
        t_exact = once("exact", "train.solver=exact", f"replicates={R}", f"data.n={5 * d}", "sampler.scheme=em",
                       "sampler.particles_from=none", "sampler.figure=false")[0]["seconds"]
        out[f"solver=exact em s (R={R}, N=5d)"] = t_exact
        out["solver=exact em s, extrapolated to R=16"] = t_exact * 16 / R
    return out


PIPELINES = {   # name: overrides; whole runs as the tests ran them (their times left the tests: issue 17)
    "small (DDPM T=1000, oracle, d=64, R=1)": ["sampler=ddpm", "model=oracle", "data.dim=64", "replicates=1"],
    "texture 64×64 (README)": ["data=texture", "model=fourier_linear", "replicates=4", "sampler.particles=64"],
    "large (solver=exact, d=512, R=8, law)": ["train.solver=exact", "data.dim=512", "replicates=8",
                                              "sampler.particles_from=law"],
}
SMOKE_PIPELINES = {
    "small (DDPM T=100, oracle, d=8, R=1)": ["sampler=ddpm", "sampler.T=100", "sampler.scaled=true", "model=oracle",
                                            "data.dim=8", "replicates=1"],
}


def busy_processes(n: int) -> list:
    """n CPU-bound Python processes: the load of a shared machine (a test suite beside other jobs)."""
    import subprocess
    import sys
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def bench_pipelines(p, device="cpu"):
    """(7) Whole runs (gsm.pipeline.run.run, after a warm-up) with 1 intra-op thread and with all cores, on
    the machine as it is and beside 2 CPU-bound processes. Seconds (results.json `seconds`), each with
    the 1-minute load average just before it. Which threads choice wins, and how much load costs it."""
    import os

    from hydra import compose, initialize_config_module

    from gsm.pipeline.run import run

    runs = SMOKE_PIPELINES if p.get("smoke") else PIPELINES
    cores = os.cpu_count() or 1
    out, before = {}, torch.get_num_threads()

    def seconds(over, threads, tmp):
        with initialize_config_module(version_base="1.3", config_module="gsm.conf"):
            cfg = compose(config_name="config", overrides=[*over, "progress=false", f"threads={threads}",
                                                           *p.get("run_overrides", ())])
        cfg.device = device
        return run(cfg, tmp)["seconds"]

    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, (name, over) in enumerate(runs.items()):
                seconds(over, 1, f"{tmp}/warm{i}")
                for load in (0,) if p.get("smoke") else (0, 2):     # smoke (CI): no CPU-bound neighbours
                    busy = busy_processes(load)
                    try:
                        for threads in (1, cores):
                            avg = os.getloadavg()[0]
                            t = seconds(over, threads, f"{tmp}/{i}_{load}_{threads}")
                            out[f"{name}, +{load} busy, threads={threads} s (load {avg:.1f})"] = t
                    finally:
                        for b in busy:
                            b.kill()
                            b.wait()
    finally:
        torch.set_num_threads(before)
    return out


def bench_readme(p, device="cpu"):
    """(8) The README tour's commands as a user types them, each a subprocess (gsm.cli.bench_readme):
    median wall seconds; the table goes into README.md between its markers (a clone)."""
    from gsm.cli import bench_readme as tour

    rows = tour.measure(tour.tour_commands(tour.README.read_text()), repeat=p["readme_repeat"])
    machine = f"{os.cpu_count()} CPU cores, torch {torch.__version__}"
    table = tour.markdown(rows, machine)
    print(table)
    if tour.rewrite_readme(table):
        print(f"rewrote the tour's table in {tour.README}")
    return {r["command"]: r["seconds"] for r in rows}


TINY_RUN = ("replicates=2", "train.steps=100", "sampler.steps=10", "progress=false")
BARE_IMPORTS = "import torch, hydra, tensorboard"


def wall_seconds(cmd, env=None) -> float:
    import subprocess
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t


def bench_startup(p, device="cpu"):
    """(9) Start-up: a tiny run (`gsm replicates=2 train.steps=100 sampler.steps=10`, a subprocess) against
    the bare imports (`python -c "import torch, hydra, tensorboard"`), interleaved, medians of 5 wall
    seconds after one warm-up of each, with the 1-minute load average before; the ratio (target ≤ 1.3).
    The same run with figures=false beside it: its four figures (matplotlib's import and drawing) are work
    the run was asked for, the rest is start-up. Bytecode is cached as in a user's install (a
    PYTHONDONTWRITEBYTECODE in the environment would recompile gsm's modules in every run; the
    site-packages were compiled by pip)."""
    import shutil
    import sys
    exe = shutil.which("gsm", path=os.path.dirname(sys.executable)) or shutil.which("gsm")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    rounds = 1 if p.get("smoke") else 6      # smoke (CI): the ratio prints; its value means nothing
    avg, bare, tiny, plain = os.getloadavg()[0], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            b = wall_seconds([sys.executable, "-c", BARE_IMPORTS], env)
            t = wall_seconds([exe, *TINY_RUN, f"device={device}", f"hydra.run.dir={tmp}/{i}"], env)
            f = wall_seconds([exe, *TINY_RUN, f"device={device}", "figures=false", f"hydra.run.dir={tmp}/{i}-plain"], env)
            if i or rounds == 1:      # the first round warms the bytecode cache and the file system
                bare.append(b), tiny.append(t), plain.append(f)
    b, t, f = (statistics.median(v) for v in (bare, tiny, plain))
    return {f"bare imports s (load {avg:.1f})": b, "tiny run s": t, "tiny run / bare imports": t / b,
            "tiny run, figures=false s": f, "tiny run, figures=false / bare imports": f / b}


BENCHMARKS = {"dsm_sgd": bench_dsm_sgd, "langevin": bench_langevin, "bures": bench_bures,
              "exact_laws": bench_exact_laws, "end_to_end": bench_end_to_end,
              "pipelines": bench_pipelines, "vp": bench_vp, "startup": bench_startup,
              "readme": bench_readme}
ALL = [k for k in BENCHMARKS if k not in ("readme", "startup")]   # the suite; the tour and start-up when named


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m gsm.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CI): prints every ratio, times mean nothing")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads for gsm and baselines alike (0: torch's default)")
    ap.add_argument("--only", nargs="*", choices=list(BENCHMARKS),
                    help="run these benchmarks only (readme: the README tour's commands, which rewrites its table)")
    ap.add_argument("--repeat", type=int, default=3, help="readme: runs per command under 20 s (the median)")
    ap.add_argument("--dry-run", action="store_true", help="readme: list the tour's commands, run nothing")
    ap.add_argument("--write-docs", nargs="?", const=str(bench_docs.PAGE), default=None, metavar="PAGE",
                    help="write each benchmark's figures, command and load into its section of PAGE "
                         "(default docs/performance.md)")
    args = ap.parse_args(argv)
    if args.dry_run:
        from gsm.cli.bench_readme import README, tour_commands
        print("\n".join(tour_commands(README.read_text())))
        return {}
    p = SMOKE if args.smoke else FULL
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA GPU is available")
    name = torch.cuda.get_device_name() if dev == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# gsm.bench  torch {torch.__version__}  device: {name}  {'(smoke sizes)' if args.smoke else ''}"
          f"  load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    results, sections = {}, {}
    p = {**p, "readme_repeat": 1 if args.smoke else args.repeat, "smoke": args.smoke}
    for key in args.only or ALL:
        t, before = time.perf_counter(), os.getloadavg()[0]
        results[key] = BENCHMARKS[key](p, dev)
        seconds, after = time.perf_counter() - t, os.getloadavg()[0]
        print(f"\n## {key}  ({seconds:.1f} s, load average now {after:.2f})")
        for k, v in results[key].items():
            print(f"  {k:<46} {v:.4g}" if isinstance(v, float) else f"  {k:<46} {v}")
        sections[key, dev] = bench_docs.section(key, results[key], command=rerun_command(key, args),
                                                machine=f"{name}, {os.cpu_count()} cores, torch {torch.__version__}",
                                                loads=(before, after), seconds=seconds)
    if args.write_docs and bench_docs.write_sections(sections, args.write_docs):
        print(f"wrote {len(sections)} section(s) of {args.write_docs}")
    return results


def rerun_command(key: str, args) -> str:
    """The command that measures benchmark `key` alone with these options."""
    opts = [f"--threads {args.threads}" if args.threads else "", "--device cuda" if args.device == "cuda" else "",
            "--smoke" if args.smoke else ""]
    return " ".join(["python -m gsm.bench --only", key, *filter(None, opts)])


if __name__ == "__main__":
    main()
