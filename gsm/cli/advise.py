"""gsm-advise: the DSM noise level σ (and optionally the steps τ, γ) that minimise the predicted
E[W2²] of the Langevin pipeline under a step budget: the trade-off the paper leaves to future work
("adapting the noise amplitude to the choice of step sizes").

    gsm-advise [OVERRIDE ...] [--sigma LO:HI|VALUE] [--tau LO:HI|VALUE] [--gamma LO:HI|VALUE]
               [--grid G] [--max-eps-tau E] [--run] [--out DIR]

The problem is the gsm config, composed from the same Hydra overrides as the `gsm` command: the
spectrum λ (data=…, data.dim=…), N = data.n, b = train.batch_size, and the budget: k = train.steps
SGD steps from A₀ = model.init, K = sampler.steps ULA steps from N(0, c₀I), c₀ = sampler.init_var.
A range LO:HI is searched (log grid, then a compass search in log space); a VALUE is fixed. By
default σ ∈ [0.01, 10] is searched, τ = train.tau and γ = sampler.gamma are fixed.

The objective is `gsm.theory.langevin.langevin_prediction(λ, n=N, sigma=σ, tau=τ, gamma=γ, batch_size=b,
steps=K, init_var=c₀, sgd_steps=k, init=model.init)["total"]` (no particle term): the prediction of
the pipeline's w2_exact, with the finite-budget transients that make σ's optimum interior:
    SGD mean    E[A_k] = A* + (A₀ − A*)(I − τσ²M̂)^k, M̂ = Σ̂ + σ²I   (exact, note §2.1)
    SGD spread  Var(A_k) grows to its stationary value τλ_r/(2b m_r)  (`DSM.fluctuations` with an `SGDBudget`)
    ULA law     h_K = g + (1 − γa)^{2K}(c₀ − g)                        (exact, note §3, §5.2)
A small σ leaves SGD short of A* (relaxation rate τσ²(λ_min + σ²)) and caps γ < 2(λ_min + σ²); a
large σ adds the noise bias Σ(√λ − √(λ+σ²))². Points where the prediction does not hold are
excluded: SGD not mean-square stable (note §2.3), ε_τ = τ max λ(λ+σ²)/(2b) > --max-eps-tau
(note §5.5), or γ ≥ 2((1 − √(d/N))² λ_min + σ²), the ULA stability limit at the Marchenko–Pastur
lower edge of Σ̂'s spectrum (note §3). --run runs the pipeline at σ*/2, σ*, 2σ* (the same τ, γ).
"""
from __future__ import annotations

import argparse
import copy
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from gsm.theory.langevin import langevin_prediction
from gsm.training.objectives import sgd_mean_square_stable

SYMBOL = {"sigma": "σ", "tau": "τ", "gamma": "γ"}
TERMS = ("noise", "discretization", "mixing", "generalization", "optimization", "total")


@dataclass
class Problem:
    """What is fixed: the spectrum λ (d,), N, b, and the budget (k SGD steps from A₀ = `init`, K ULA
    steps from N(0, init_var·I))."""
    eigenvalues: torch.Tensor
    n: int
    batch_size: int
    sgd_steps: int
    sampler_steps: int
    init_var: float = 1.0
    init: str = "zeros"
    max_eps_tau: float = 0.03

    def predict(self, sigma: float, tau: float, gamma: float) -> dict:
        """langevin_prediction with the pipeline's options (finite k and K)."""
        return langevin_prediction(self.eigenvalues, n=self.n, sigma=sigma, tau=tau, gamma=gamma,
                                   batch_size=self.batch_size, steps=self.sampler_steps,
                                   init_var=self.init_var, sgd_steps=self.sgd_steps, init=self.init)

    def infeasible(self, sigma: float, tau: float, gamma: float) -> str | None:
        """Why the prediction does not hold at (σ, τ, γ), or None."""
        lam, b = self.eigenvalues, self.batch_size
        if not sgd_mean_square_stable(lam, sigma=sigma, tau=tau, batch_size=b):
            return "SGD is not mean-square stable (note §2.3)"
        eps_tau = tau * float((lam * (lam + sigma ** 2)).max()) / (2 * b)
        if eps_tau > self.max_eps_tau:
            return f"eps_tau = {eps_tau:.3g} > {self.max_eps_tau}"
        edge = max(0.0, 1 - math.sqrt(lam.numel() / self.n)) ** 2 * float(lam.min())
        if gamma >= 2 * (edge + sigma ** 2):
            return f"γ ≥ 2((1 − √(d/N))²λ_min + σ²) = {2 * (edge + sigma ** 2):.4g}: ULA may be unstable"
        return None

    def objective(self, sigma: float, tau: float, gamma: float) -> float:
        """Predicted E[W2²] (w2_exact, no particle term); +inf where `infeasible`."""
        if self.infeasible(sigma, tau, gamma):
            return math.inf
        return self.predict(sigma, tau, gamma)["total"]


def minimise(f, box: dict, grid: int | None = None, tol: float = 1e-4):
    """Minimises f(**point) over a box {name: (lo, hi)} of positive parameters (lo = hi: fixed): a log
    grid of `grid` points per free axis (default 41, 17, 11 for 1, 2, 3 free), then a compass search
    in log space from the best grid point (step = the grid spacing, halved down to `tol`).
    Returns (point dict, f(point), number of evaluations)."""
    free = [k for k, (lo, hi) in box.items() if hi > lo]
    grid = grid or {0: 1, 1: 41, 2: 17}.get(len(free), 11)
    lo = [math.log(box[k][0]) for k in free]
    hi = [math.log(box[k][1]) for k in free]
    evals = 0

    def g(u):
        nonlocal evals
        evals += 1
        p = {k: v[0] for k, v in box.items()}
        p.update({k: math.exp(x) for k, x in zip(free, u)})
        return f(**p), p

    best, best_u, best_p = math.inf, None, None
    for u in itertools.product(*[torch.linspace(a, b, grid).tolist() for a, b in zip(lo, hi)]):
        v, p = g(u)
        if v < best:
            best, best_u, best_p = v, list(u), p
    if not math.isfinite(best):
        raise ValueError("no feasible point in the box (every point is unstable or outside the "
                         "prediction's validity): widen the ranges or raise --max-eps-tau")
    step = [(b - a) / max(grid - 1, 1) for a, b in zip(lo, hi)]
    while free and max(step) > tol:
        moved = False
        for i, s in itertools.product(range(len(free)), (1, -1)):
            u = best_u.copy()
            u[i] = min(max(u[i] + s * step[i], lo[i]), hi[i])
            v, p = g(u)
            if v < best:
                best, best_u, best_p, moved = v, u, p, True
                break
        if not moved:
            step = [h / 2 for h in step]
    return best_p, best, evals


def advise(problem: Problem, box: dict, grid: int | None = None) -> dict:
    """The optimum of `problem.objective` over `box` ({"sigma", "tau", "gamma"}: (lo, hi)), its predicted
    terms, the profile at σ*/2 and 2σ*, and the relaxation diagnostics. Plain python values."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # thousands of tiny float64 problems: threads only add overhead
    try:
        t0 = time.time()
        opt, total, evals = minimise(problem.objective, box, grid)
        pred = problem.predict(**opt)
        profile = {}
        for f in (0.5, 1, 2):
            s = opt["sigma"] * f
            why = problem.infeasible(s, opt["tau"], opt["gamma"])
            profile[f"{f:g}"] = why or problem.predict(s, opt["tau"], opt["gamma"])["total"]
    finally:
        torch.set_num_threads(threads)
    lam = problem.eigenvalues
    s2, tau, gamma = opt["sigma"] ** 2, opt["tau"], opt["gamma"]
    terms = {k: pred[k] for k in (*TERMS[:-1], "sgd_mean_offset", "total")}
    edge = lambda k, lo, hi: min(abs(math.log(opt[k] / lo)), abs(math.log(opt[k] / hi))) < 1e-3
    active = [f"{SYMBOL[k]} at the {'lower' if opt[k] < math.sqrt(lo * hi) else 'upper'} end of its range"
              for k, (lo, hi) in box.items() if hi > lo and edge(k, lo, hi)]
    if pred["eps_tau"] > problem.max_eps_tau * (1 - 1e-3):
        active.append(f"eps_tau at its cap --max-eps-tau = {problem.max_eps_tau:g}")
    return {
        "optimum": opt, "predicted": terms, "profile_sigma_factor": profile, "active_constraints": active,
        "free": [k for k, (lo, hi) in box.items() if hi > lo], "box": {k: list(v) for k, v in box.items()},
        "problem": {"eigenvalues": lam.tolist(), "n": problem.n, "batch_size": problem.batch_size,
                    "sgd_steps": problem.sgd_steps, "sampler_steps": problem.sampler_steps,
                    "init_var": problem.init_var, "init": problem.init, "max_eps_tau": problem.max_eps_tau},
        # slowest modes: SGD mean offset ∝ (1 − τσ²m_min)^k ≈ e^{−this}; ULA burn-in ∝ (1 − γ/m_max)^{2K}
        "sgd_relaxations": problem.sgd_steps * tau * s2 * (float(lam.min()) + s2),
        "ula_relaxations": problem.sampler_steps * gamma / (float(lam.max()) + s2),
        "eps_tau": pred["eps_tau"], "d_over_n": pred["d_over_n"], "warnings": pred["warnings"],
        "evaluations": evals, "seconds": time.time() - t0,
    }


def format_advice(advice: dict) -> str:
    p, opt, t = advice["problem"], advice["optimum"], advice["predicted"]
    lam = p["eigenvalues"]
    box = advice["box"]
    searched = ", ".join(f"{SYMBOL[k]} ∈ [{box[k][0]:g}, {box[k][1]:g}]" for k in advice["free"])
    fixed = ", ".join(f"{SYMBOL[k]} = {v[0]:g}" for k, v in box.items() if k not in advice["free"])
    lines = [
        f"spectrum d = {len(lam)} (λ from {max(lam):.4g} to {min(lam):.4g}), N = {p['n']}, b = {p['batch_size']}; "
        f"budget: k = {p['sgd_steps']} SGD steps from A₀ = {p['init']}, K = {p['sampler_steps']} ULA steps "
        f"from N(0, {p['init_var']:g}·I)",
        f"searched {searched or 'nothing'} (fixed: {fixed or 'nothing'}); "
        f"{advice['evaluations']} predictions in {advice['seconds']:.1f} s",
        "optimum: " + "   ".join(f"{SYMBOL[k]}{'*' if k in advice['free'] else ''} = {opt[k]:.4g}" for k in opt),
        f"predicted E[W2²] (w2_exact) = {t['total']:.6g}",
    ]
    for k in TERMS[:-1]:
        lines.append(f"  {k:<16} {t[k]:.6g}")
    lines.append(f"    of which the SGD mean offset (E[A_k] ≠ A*): {t['sgd_mean_offset']:.6g}")
    lines.append(f"relaxations: SGD kτσ²(λ_min+σ²) = {advice['sgd_relaxations']:.3g}, "
                 f"ULA Kγ/(λ_max+σ²) = {advice['ula_relaxations']:.3g}; "
                 f"eps_tau = {advice['eps_tau']:.3g}, d/N = {advice['d_over_n']:.3g}")
    pr = advice["profile_sigma_factor"]
    lines.append("profile: " + ", ".join(f"{name} → {pr[f]:.6g}" if isinstance(pr[f], float) else
                                          f"{name} → excluded ({pr[f]})" for f, name in
                                          (("0.5", "σ*/2"), ("1", "σ*"), ("2", "2σ*"))))
    lines += [f"active constraint: {a}" for a in advice["active_constraints"]]
    lines += [f"warning: {w}" for w in advice["warnings"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# the gsm config and the confirmation runs

def compose_config(overrides=()):
    """The gsm config for these Hydra overrides, as the `gsm` command composes it."""
    from hydra import compose, initialize_config_module
    with initialize_config_module(version_base="1.3", config_module="gsm.conf"):
        return compose(config_name="config", overrides=list(overrides))


def problem_from_config(cfg, max_eps_tau: float = 0.03) -> Problem:
    """The Problem of a Langevin + linear-score + DSM-SGD config (ValueError for any other pipeline)."""
    from hydra.utils import get_object, instantiate

    from gsm.pipeline.kinds import data_kind
    from gsm.samplers.langevin import Langevin
    sampler_cls = get_object(cfg.sampler._target_)
    if data_kind(cfg) != "gaussian" or not (isinstance(sampler_cls, type) and issubclass(sampler_cls, Langevin)):
        raise ValueError("gsm-advise supports the Langevin sampler on a d×d Gaussian (no textures, DDPM or DDIM)")
    if not str(cfg.model._target_).endswith(".LinearScore") or cfg.model.symmetric:
        raise ValueError("gsm-advise needs model=linear with model.symmetric=false (the trained linear score)")
    if cfg.train.solver != "sgd" or cfg.train.sampling != "with_replacement":
        raise ValueError("gsm-advise needs train.solver=sgd and train.sampling=with_replacement")
    return Problem(instantiate(cfg.data.spectrum), n=int(cfg.data.n), batch_size=int(cfg.train.batch_size),
                   sgd_steps=int(cfg.train.steps), sampler_steps=int(cfg.sampler.steps),
                   init_var=float(cfg.sampler.init_var), init=str(cfg.model.init), max_eps_tau=max_eps_tau)


def confirm(cfg, advice: dict, out: Path, problem: Problem) -> list:
    """Runs gsm.pipeline.run.run at σ*/2, σ*, 2σ* (τ*, γ* unchanged): measured w2_exact vs predicted."""
    from gsm.pipeline.run import run
    opt, rows = advice["optimum"], []
    for name, f in (("sigma_half", 0.5), ("sigma_star", 1.0), ("sigma_double", 2.0)):
        c = copy.deepcopy(cfg)
        c.train.sigma, c.train.tau, c.sampler.gamma = opt["sigma"] * f, opt["tau"], opt["gamma"]
        res = run(c, out / name)
        w2 = res.get("w2_exact") or {}
        rows.append({"name": name, "sigma": opt["sigma"] * f, "measured": w2.get("mean", math.nan),
                     "stderr": math.nan if w2.get("stderr") is None else w2["stderr"], "replicates": w2.get("n", 0),
                     "predicted": problem.predict(opt["sigma"] * f, opt["tau"], opt["gamma"])["total"],
                     "excluded": problem.infeasible(opt["sigma"] * f, opt["tau"], opt["gamma"]),
                     "pipeline_w2_predicted": res.get("w2_predicted"),
                     "unstable_replicates": res.get("unstable_replicates"), "status": res.get("status")})
    return rows


def format_runs(rows: list, out) -> str:
    lines = [f"confirmation runs (outputs in {out}):",
             f"  {'σ':<20}{'measured w2_exact':<26}{'predicted (advisor)':<22}{'pipeline w2_predicted':<24}unstable"]
    for r, label in zip(rows, ("σ*/2", "σ*", "2σ*")):
        pipe = r["pipeline_w2_predicted"]
        lines.append(f"  {label + ' = ' + format(r['sigma'], '.4g'):<20}"
                     f"{format(r['measured'], '.5g') + ' ± ' + format(r['stderr'], '.2g'):<26}"
                     f"{r['predicted']:<22.5g}{'-' if pipe is None else format(pipe, '.5g'):<24}"
                     f"{r['unstable_replicates']}" + (f"   (outside the advisor's region: {r['excluded']})"
                                                      if r["excluded"] else ""))
    star = rows[1]
    for r, label in ((rows[0], "σ*/2"), (rows[2], "2σ*")):
        gap = (r["measured"] - star["measured"]) / math.hypot(r["stderr"], star["stderr"])
        lines.append(f"  σ* {'beats' if gap > 0 else 'does not beat'} {label} by {gap:.1f} combined s.e.")
    return "\n".join(lines)


def _range(text: str) -> tuple:
    lo, _, hi = text.partition(":")
    try:
        lo, hi = float(lo), float(hi or lo)
    except ValueError:
        lo = hi = math.nan
    if not (0 < lo <= hi < math.inf):
        raise argparse.ArgumentTypeError(f"expected VALUE or LO:HI with 0 < LO <= HI, got {text!r}")
    return lo, hi


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="gsm-advise", description=__doc__.split("\n\n")[0],
        epilog="example: gsm-advise data.dim=4 data.n=200 train.steps=500 train.tau=0.01 sampler.steps=200 --run",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the gsm config (data=…, data.n=N, "
                    "train.steps=k, sampler.steps=K, train.batch_size=b, …)")
    ap.add_argument("--sigma", type=_range, default=(0.01, 10.0), help="σ: LO:HI searched (default 0.01:10) or VALUE")
    ap.add_argument("--tau", type=_range, help="τ: LO:HI searched or VALUE (default: train.tau, fixed)")
    ap.add_argument("--gamma", type=_range, help="γ: LO:HI searched or VALUE (default: sampler.gamma, fixed)")
    ap.add_argument("--grid", type=int, help="grid points per searched axis (default 41, 17, 11 for 1, 2, 3 axes)")
    ap.add_argument("--max-eps-tau", type=float, default=0.03,
                    help="exclude ε_τ = τ max λ(λ+σ²)/(2b) above this (default 0.03, note §5.5)")
    ap.add_argument("--run", action="store_true", help="run the pipeline at σ*/2, σ*, 2σ* to confirm the optimum")
    ap.add_argument("--out", help="folder for advice.json and the runs (default with --run: "
                    "outputs/advise/<timestamp>)")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = compose_config(args.overrides)
        problem = problem_from_config(cfg, args.max_eps_tau)
        box = {"sigma": args.sigma, "tau": args.tau or (float(cfg.train.tau),) * 2,
               "gamma": args.gamma or (float(cfg.sampler.gamma),) * 2}
        advice = advise(problem, box, args.grid)
    except (ValueError, HydraException, OmegaConfBaseException) as e:     # a bad override or config
        ap.error(str(e))
    print(format_advice(advice), flush=True)
    if args.run or args.out:
        from gsm.io import write_json_atomic
        out = Path(args.out or Path("outputs/advise") / time.strftime("%Y-%m-%d_%H-%M-%S"))
        out.mkdir(parents=True, exist_ok=True)
        if args.run:
            advice["runs"] = confirm(cfg, advice, out, problem)
            print(format_runs(advice["runs"], out))
        write_json_atomic(out / "advice.json", advice)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
