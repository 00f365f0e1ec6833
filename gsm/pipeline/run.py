"""The pipeline: N samples of N(0, Σ) → score fitted by DSM → sampler → W2² against the target.

`run(cfg, output_dir)` is a plain function (tests call it directly); `gsm.cli` wraps it in Hydra.
Every stage is batched over R independent replicates; evaluation is in float64. The config is
validated first (`gsm.validate`), and SIGINT/SIGTERM during a run leave results.json with status
`interrupted` (README, "Robustness").
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gsm.data.gaussian import make_gaussian
from gsm.pipeline.interrupt import SummaryWriter, Terminated, deferred, interruptible
from gsm.pipeline.status import Heartbeat, error_record, process_record, write_results
from gsm.pipeline.memory import check_memory
from gsm.theory.bures import bures_wasserstein2, second_moment
from gsm.scores.linear import dsm_optimum
from gsm.theory.bures import ESCAPE_TAIL, escaped_fraction, gaussian_fit, gaussian_fit_w2
from gsm.scores.nets import build_score_model
from gsm.training.dsm import empirical_dsm_minimizer, train_linear_dsm, train_score_net
from gsm.theory.regime import (RELAXATION_TIMES_MIN, linear_regime, neural_regime, relaxation_times,
                               verdict_lines)
from gsm.pipeline.validate import ConfigError, as_config_error, validate_config

log = logging.getLogger("gsm")

W2_KEYS = ("w2_exact", "w2_empirical", "w2_predicted", "w2_predicted_empirical")
DIAGNOSTICS = ("d_over_n", "eps_tau")     # numbers of a prediction that are not terms of it


def resolve_device(name: str) -> torch.device:
    """auto → cuda if available else cpu; cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be one of auto | cpu | cuda, got {name}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA GPU is available (use device=cpu or device=auto)")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be one of float32 | float64, got {name}")
    return getattr(torch, name)


def mean_stderr(values: torch.Tensor) -> dict:
    """Mean and standard error (ddof = 1) over replicates; NaN-free input expected. An undefined number is
    None (JSON null) with `<key>_reason`: the s.e. of one replicate, the mean of none."""
    v = values.to(torch.float64)
    n = v.numel()
    out = {"mean": float(v.mean()) if n else None, "stderr": float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else None,
           "n": n}
    if n == 0:
        out["mean_reason"] = "no replicate"
    if n < 2:
        out["stderr_reason"] = f"{n} replicate{'s' * (n != 1)}: a standard error needs 2 or more"
    return out


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


def fit_score(model, x, target, alphas, stds, cfg, generator, writer, progress) -> dict:
    """Fits the score at the sampler's noise levels: oracle (exact Σ), solver=exact (Σ̂) or DSM-SGD."""
    t = cfg.train
    if not hasattr(model, "matrices"):     # a neural / user score: DSM with the optimizer of cfg.optim
        if t.solver != "sgd":
            raise ValueError(f"train.solver=exact needs a linear model (model=linear), got train.solver={t.solver}")
        out = train_score_net(model, x, alphas=alphas, stds=stds, optimizer=instantiate(cfg.optim)(model.parameters()),
                              batch_size=t.batch_size, steps=t.steps, generator=generator, log_every=t.log_every,
                              progress=progress, callback=lambda k, loss: writer.add_scalar("train/dsm_loss", loss, k))
        return {"diverged_at": out["diverged_at"].cpu()}
    if not model.requires_training:
        model.set_matrices(dsm_optimum(target.covariance.to(x.device), alphas, stds).expand_as(model.A))
        return {}
    if t.solver == "exact":
        model.set_matrices(empirical_dsm_minimizer(x, alphas, stds))
        return {}
    if t.solver != "sgd":
        raise ValueError(f"train.solver must be one of sgd | exact, got {t.solver}")
    out = train_linear_dsm(model.A.data, x, alphas=alphas, stds=stds, tau=t.tau, batch_size=t.batch_size,
                           steps=t.steps, sampling=t.sampling, symmetric=model.symmetric,
                           generator=generator, log_every=t.log_every, progress=progress,
                           callback=lambda k, loss: writer.add_scalar("train/dsm_loss", loss, k))
    return {"diverged_at": out["diverged_at"].cpu()}


def run(cfg: DictConfig, output_dir) -> dict:
    """Runs one experiment (R replicates) and returns the results dict also written to results.json.

    Raises gsm.pipeline.validate.ConfigError (nothing written) for a bad config or one whose estimated memory
    exceeds the cap (`gsm.memory`); KeyboardInterrupt (SIGINT) or
    `Terminated` (SIGTERM) after writing results.json with status `interrupted`; any other exception after
    writing status `failed` with its type and message (`error`)."""
    checks = validate_config(cfg)
    check_memory(cfg)          # the estimated peak against the memory available (or max_memory_gb)
    if cfg.get("threads") == "auto":
        before = torch.get_num_threads()
        torch.set_num_threads(auto_threads(cfg))
        try:
            return _interruptible_run(cfg, output_dir, checks)
        finally:
            torch.set_num_threads(before)
    if cfg.get("threads"):     # small batched ops on a busy machine: extra threads wait on each other
        torch.set_num_threads(int(cfg.threads))
    return _interruptible_run(cfg, output_dir, checks)


AUTO_THREADS_MIN_DIM = 1024     # below: 1 intra-op thread (gsm.bench pipelines, README "Performance")
AUTO_THREADS_MIN_SIZE = 256     # textures: the image side


def auto_threads(cfg) -> int:
    """threads=auto: 1 intra-op thread for small problems, all cores for large ones. Every parallel torch op
    ends at a barrier; on a busy machine a descheduled thread holds it for a scheduler time slice, so
    the many small ops of a small-d run get up to ~10× slower with 2 threads, for ≤ 10 % gained when idle;
    on the shared 2-core machine 2 threads lost at d = 64, 512 and 64×64 textures. Large d×d products
    gain ~2× from 2 idle cores. Set by size only, so that results do not depend on the machine's load."""
    import os

    from gsm.pipeline.memory import data_dim
    large = (int(cfg.data.size) >= AUTO_THREADS_MIN_SIZE if "image" in cfg.data
             else data_dim(cfg) >= AUTO_THREADS_MIN_DIM)
    return (os.cpu_count() or 1) if large else 1


def _interruptible_run(cfg: DictConfig, output_dir, checks: list) -> dict:
    with interruptible():
        try:
            if "image" in cfg.data:     # stationary texture: the Fourier-diagonal pipeline (no d×d matrix)
                from gsm.pipeline.texture import run_texture
                return run_texture(cfg, output_dir, checks)
            if cfg.sampler.get("_target_") == "gsm.samplers.vp.VP":     # VP schemes: per-eigenvalue path when it applies
                from gsm.pipeline.vp import run_vp
                return run_vp(cfg, output_dir, checks)
            return _run(cfg, output_dir, checks)
        except ConfigError:
            raise
        except Exception as e:
            record_failure(Path(output_dir), cfg, checks, e)
            raise


def record_failure(out: Path, cfg: DictConfig, checks: list, e: Exception) -> None:
    """results.json with status `failed` for an exception raised before `recorded` took over (building
    the sampler, the writer, ...); `recorded` has written it already for one raised inside."""
    path = out / "results.json"
    try:
        if path.exists() and json.loads(path.read_text()).get("status") != "running":
            return
        out.mkdir(parents=True, exist_ok=True)
        write_results(path, {"status": "failed", "error": error_record(e),
                             "config": OmegaConf.to_container(cfg, resolve=True), "warnings": list(checks)})
    except (OSError, ValueError):     # nowhere to write: gsm's message and exit status still say it
        pass


def start(cfg: DictConfig, output_dir, checks: list):
    """The run's folder (created), its results dict (status running, the resolved config) and its
    warn(msg), which logs msg and keeps it in results["warnings"]; the validation warnings go first."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"status": "running", "config": OmegaConf.to_container(cfg, resolve=True), "warnings": []}

    def warn(msg):
        log.warning(msg)
        results["warnings"].append(msg)

    for msg in checks:     # e.g. τ beyond the SGD stability limit
        warn(msg)
    return out, results, warn


def _run(cfg: DictConfig, output_dir, checks: list) -> dict:
    t0 = time.time()
    out, results, warn = start(cfg, output_dir, checks)
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype)
    progress = bool(cfg.progress) and sys.stderr.isatty()
    R, N = int(cfg.replicates), int(cfg.data.n)
    spectrum = instantiate(cfg.data.spectrum)
    target = make_gaussian(spectrum, cfg.data.basis, cfg.seed)
    d, Sigma = target.dim, target.covariance.to(device)
    sampler = instantiate(cfg.sampler)
    if hasattr(sampler, "bind"):     # sampler=vp: init=prior needs Σ; reports nfe, steps
        results.update(sampler.bind(Sigma))
    alphas, stds = sampler.noise_levels(cfg.train.sigma)
    L = alphas.numel()
    with as_config_error("model"):     # the model's own checks (e.g. model.depth), as one-line errors
        model = build_score_model(cfg.model, dim=d, replicates=R, alphas=alphas, stds=stds, seed=int(cfg.seed))
    learned = model.requires_training and cfg.train.solver == "sgd"
    # closed-form scores (oracle, solver=exact) are kept in float64: no training dtype applies
    model = model.to(device=device, dtype=dtype if learned else torch.float64)
    gen = torch.Generator(device).manual_seed(int(cfg.seed))

    writer = SummaryWriter(log_dir=str(out / "tb"))
    with recorded(writer, results, t0, out):
        # 1. data: R independent data sets of N samples
        x = target.sample((R, N), generator=gen, device=device)
        # 2. score
        fit = fit_score(model, x, target, alphas, stds, cfg, gen, writer, progress)
        if not hasattr(model, "matrices"):     # non-linear score: no exact law, Gaussian fits of particles
            _evaluate_score_net(results, model, sampler, spectrum, Sigma, fit, cfg, gen, writer, progress, warn)
            return results
        A = model.matrices()
        symmetric = getattr(model, "symmetric", False)
        # the prediction models a finite SGD budget (not for the symmetric variant)
        transient = sgd_budget(cfg) if learned and not symmetric else {}
        times = None
        if learned:
            times = relaxation_times(int(cfg.train.steps), cfg.train.tau, alphas, stds, float(spectrum.min()))
            results["relaxation_times"] = float(times.min())
            results["relaxation_times_per_level"] = times.tolist()
            if results["relaxation_times"] < RELAXATION_TIMES_MIN:
                warn(f"SGD ran {results['relaxation_times']:.2f} relaxation times (< {RELAXATION_TIMES_MIN:g}) at "
                     "the slowest level: A is not stationary; "
                     + ("the prediction includes the SGD transient (exact mean, first order in τ)" if transient else
                        "the τ prediction assumes it is; raise train.steps or train.tau"))
            if cfg.train.sampling == "epochs":
                warn("train.sampling=epochs lowers the SGD noise by up to ~20% (theory note §8): "
                     "the τ prediction assumes sampling with replacement")
        # 3. stability, exact law, particles
        unstable = sampler.unstable(A).cpu()
        unstable |= record_divergence(results, fit)
        if none_left(results, unstable, warn):
            return results
        C = sampler.covariance(A)
        samples = sampler.sample(model, R, d, generator=gen, device=device, progress=progress, dtype=dtype)
        # a finite but huge A can still overflow its law or its (float32) particles: counted unstable too
        unstable |= ~(_finite(C) & _finite(samples)).cpu()
        if none_left(results, unstable, warn):
            return results
        ok = (~unstable).to(device)
        A, C, samples = A[ok], C[ok], samples[ok]
        Sigma64 = Sigma.to(torch.float64)
        results["w2_exact"] = mean_stderr(bures_wasserstein2(Sigma64, C).cpu())
        if hasattr(sampler, "covariance_stationary"):
            Cs = sampler.covariance_stationary(A)
            Cs = Cs[_finite(Cs)]     # NaN where the doubling did not converge
            if len(Cs):
                results["w2_exact_stationary"] = mean_stderr(bures_wasserstein2(Sigma64, Cs).cpu())
        results["w2_empirical"] = mean_stderr(bures_wasserstein2(Sigma64, second_moment(samples)).cpu())
        results["covariance_estimator"] = "(1/M) Σ x xᵀ over M independent particles (known zero mean)"
        results.update(sampler.results_extra() if hasattr(sampler, "results_extra") else {})  # e.g. law_method
        # 4. theory
        pred = sampler.prediction(spectrum, n=None if not model.requires_training else N,
                                  sigma=cfg.train.sigma, tau=cfg.train.tau if learned else 0.0,
                                  batch_size=cfg.train.batch_size, particles=sampler.particles,
                                  symmetric=symmetric, **transient)
        terms = {k: float(v) for k, v in pred.items() if isinstance(v, (int, float)) and k not in DIAGNOSTICS}
        results["prediction_terms"] = terms
        results["w2_predicted"] = terms["total"] - terms.get("particles", 0.0)
        results["w2_predicted_empirical"] = terms["total"]
        results["diagnostics"] = {k: pred[k] for k in DIAGNOSTICS if k in pred}
        for w in pred.get("warnings", []):
            warn(w)
        results["regime"] = linear_regime(
            terms=terms, d=d, n=N if model.requires_training else None, eps_tau=pred.get("eps_tau"),
            times=times, steps=int(cfg.train.steps), tau=cfg.train.tau if learned else 0.0,
            unstable=results["unstable_replicates"], replicates=R, sampling=cfg.train.sampling)
        results["status"] = "ok"
        _log_eval(writer, results, terms, spectrum, C, sampler, A, Sigma64, cfg)
        _log_figures(writer, spectrum, C, pred, cfg.train.steps)
    return results


@contextmanager
def recorded(writer, results: dict, t0: float, out: Path):
    """The body of a run. On entry results.json says `running`, with the process (`gsm.status`: a job
    killed without a final write is then reported `lost`). However the body ends, hparams (finished runs)
    go to TensorBoard, which is flushed, and results.json is written: after SIGINT or SIGTERM with status
    `interrupted` and the signal's name, after any other exception with status `failed` and `error`
    (type, message). A first signal arriving during that write is raised once it is done (a finished run
    keeps its status)."""
    beat, ended = None, False
    try:
        with deferred():     # a signal arriving before the record and heartbeat are in place is raised here
            write_results(out / "results.json", {**results, "process": process_record()})
            beat = Heartbeat(out)
        yield
        ended = True
    except KeyboardInterrupt as e:     # SIGINT, or SIGTERM (Terminated)
        results["status"] = "interrupted"
        results["signal"] = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        raise
    except Exception as e:             # OOM, a user model's error, a disk error, ...
        results["status"], results["error"] = "failed", error_record(e)
        raise
    finally:
        with deferred():
            if beat is not None:
                beat.stop()
            results["seconds"] = time.time() - t0
            closing = _close_writer(writer, results)
            if results["status"] == "running":     # a pipeline returned without a verdict: a bug, said as such
                results["status"], results["error"] = "failed", {"type": "RuntimeError", "message": "no status set"}
            write_results(out / "results.json", results)
            if closing is not None and ended:
                raise closing


def _close_writer(writer, results: dict):
    """hparams (finished runs) and close; an error is recorded as the run's failure (unless it has already
    ended otherwise) and returned, so that results.json is written first."""
    try:
        if results["status"] in ("ok", "diverged"):
            writer.add_hparams(_flatten(results["config"]),
                               {f"hparam/{k}": _scalar(results.get(k)) for k in W2_KEYS}, run_name=".")
        writer.close()
    except Exception as e:
        if results["status"] in ("ok", "diverged", "running"):
            results["status"], results["error"] = "failed", error_record(e)
        return e
    return None


def sgd_budget(cfg) -> dict:
    """The prediction's arguments for the finite SGD budget (train.steps from A₀ = model.init), which
    enters exactly through the mean offset and at first order through the transient variance; 0 steps:
    the untrained score A₀, a valid baseline."""
    return dict(sgd_steps=int(cfg.train.steps), init=cfg.model.get("init", "zeros"))


def record_divergence(results: dict, fit: dict) -> torch.Tensor:
    """Records the trainer's per-replicate divergence step (−1: never); returns the (R,) mask of
    diverged replicates (all False when nothing was trained)."""
    if "diverged_at" not in fit:
        return torch.zeros((), dtype=torch.bool)
    at = fit["diverged_at"].cpu()
    results["diverged_at"] = at.tolist()
    results["diverged_replicates"] = int((at >= 0).sum())
    return at >= 0


def none_left(results: dict, unstable: torch.Tensor, warn) -> bool:
    """Records unstable_replicates; when every replicate is out, status `diverged` and True."""
    results["unstable_replicates"] = int(unstable.sum())
    if unstable.all():
        results["status"] = "diverged"
        warn("every replicate diverged or gave an unstable sampler: no W2 to report")
    return bool(unstable.all())


def _finite(x: torch.Tensor) -> torch.Tensor:
    """Per replicate (leading dim): every entry finite. (R, ...) → (R,) bool."""
    return torch.isfinite(x).flatten(1).all(1)


def _scalar(v):
    if isinstance(v, dict):
        v = v.get("mean")
    return float("nan") if v is None else float(v)


def log_w2(writer, results: dict, terms: dict, step: int) -> None:
    """eval/<w2 key> and theory/<term> scalars, and the Custom Scalars charts that overlay measured and
    predicted W2². Plain (float32) scalar summaries: TensorBoard's default loader skips double-precision
    tensors; the full-precision numbers are in results.json."""
    for k in (*W2_KEYS, "w2_exact_stationary"):
        if k in W2_KEYS or k in results:
            writer.add_scalar(f"eval/{k}", _scalar(results.get(k)), step)
    for k, v in terms.items():
        writer.add_scalar(f"theory/{k}", v, step)
    writer.add_custom_scalars({"W2² (squared Bures–Wasserstein)": {
        "measured vs predicted": ["Multiline", ["eval/w2_exact", "eval/w2_predicted"]],
        "particles vs predicted with 1/M": ["Multiline", ["eval/w2_empirical", "eval/w2_predicted_empirical"]],
    }})
    log_regime(writer, results.get("regime"), step)


def log_regime(writer, regime: dict | None, step: int) -> None:
    """regime/ok (1 or 0) as a scalar and the verdict with its reasons as text (TensorBoard's Text tab)."""
    if regime:
        writer.add_scalar("regime/ok", float(regime["ok"]), step)
        writer.add_text("regime/verdict", "  \n".join(verdict_lines(regime)), step)


def _log_eval(writer, results, terms, spectrum, C, sampler, A, Sigma, cfg):
    log_w2(writer, results, terms, int(cfg.train.steps))
    sampler.log_extra(writer, A, Sigma, int(cfg.train.steps))


def _log_figures(writer, spectrum, C, pred, step):
    """spectrum/target_vs_learned and theory/kernels, in TensorBoard and as PNGs in <run>/figures/."""
    import matplotlib
    matplotlib.use("Agg")      # no display needed (and none on a cluster node)

    from gsm.figures import log_figure
    from gsm.figures import plot_kernels

    log_figure(writer, "spectrum/target_vs_learned", spectrum_figure(spectrum, C), step)
    log_figure(writer, "theory/kernels", plot_kernels(pred), step)


def spectrum_figure(spectrum, C):
    """The eigenvalues of the sampler covariances C (R, d, d) against the target's, both sorted
    decreasingly and plotted against their rank i (log–log)."""
    import matplotlib.pyplot as plt

    from gsm.figures import index_ticks, log_ticks

    lam = spectrum.sort(descending=True).values
    learned = torch.linalg.eigvalsh(0.5 * (C + C.transpose(-1, -2))).flip(-1).cpu()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    i = torch.arange(1, lam.numel() + 1)
    for r in range(min(learned.shape[0], 32)):
        ax.plot(i, learned[r], color="tab:orange", alpha=0.2, lw=0.8)
    ax.plot(i, learned.mean(0), color="tab:orange", label="sampler covariance (mean over replicates)")
    ax.plot(i, lam, "k--", label="target spectrum λ")
    ax.set(yscale="log", xlabel="index i (eigenvalues sorted decreasingly)", ylabel="eigenvalue")
    index_ticks(ax, lam.numel())
    log_ticks(ax, "y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def summary_table(results: dict) -> str:
    """The short table printed at the end of a run."""
    lines = [*verdict_lines(results.get("regime")),
             f"status: {results['status']}   unstable replicates: {results.get('unstable_replicates', 0)}"
             f"   seconds: {results.get('seconds', 0):.1f}"]
    for k in (*W2_KEYS, "w2_empirical_debiased", "w2_predicted_linear"):   # the last two: neural scores
        v = results.get(k)
        if isinstance(v, dict):
            se = "n/a" if v["stderr"] is None else format(v["stderr"], ".2g")
            lines.append(f"  {k:<24} {v['mean']:.6g} ± {se} (s.e., {v['n']} replicates)")
        elif v is not None:
            lines.append(f"  {k:<24} {v:.6g}")
    return "\n".join(lines)


def _evaluate_score_net(results, model, sampler, spectrum, Sigma, fit, cfg, gen, writer, progress, warn):
    """Evaluation of a non-linear score (model=mlp, user models). The sampler's law is not Gaussian and
    has no closed form: w2_exact is null; w2_empirical = |m̂|² + B²(Σ, Ĉ) between N(0, Σ) and the
    Gaussian fit N(m̂, Ĉ) of the M particles (a lower bound on the true W2²), with its 1/M bias
    (`gaussian_fit_w2`) subtracted in w2_empirical_debiased. w2_predicted_linear is the theory's
    prediction for a linear score with the same (N, σ, τ, γ), for comparison."""
    R, d, step = int(cfg.replicates), spectrum.numel(), int(cfg.train.steps)
    device = Sigma.device
    with torch.no_grad():
        samples = sampler.sample(model, R, d, generator=gen, device=device, progress=progress,
                                 dtype=resolve_dtype(cfg.dtype))
    unstable = record_divergence(results, fit) | ~_finite(samples).cpu()
    if none_left(results, unstable, warn):
        return
    samples = samples[(~unstable).to(device)]
    w2, bias = (v.cpu() for v in gaussian_fit_w2(Sigma, samples))
    results["w2_exact"] = None
    results["w2_empirical"] = mean_stderr(w2)
    results["w2_empirical_debiased"] = mean_stderr(w2 - bias)
    results["particle_bias"] = mean_stderr(bias)
    results["w2_empirical_per_replicate"] = w2.tolist()     # non-linear scores can have outlier replicates
    # the reference is the law the same sampler has with the exact score (Langevin at σ > 0 is wider than
    # N(0, Σ): its own particles would "escape" Σ's tail)
    alphas, stds = sampler.noise_levels(cfg.train.sigma)
    reference = sampler.covariance(dsm_optimum(Sigma.to(torch.float64), alphas, stds).unsqueeze(0))[0]
    escaped = escaped_fraction(reference, samples).cpu()
    results["escaped_fraction_per_replicate"] = escaped.tolist()
    if (escaped > 0).any():
        warn(f"{int((escaped > 0).sum())} of {len(escaped)} replicates have particles beyond the {ESCAPE_TAIL:g} "
             f"tail of the exact-score sampler's law (up to {100 * float(escaped.max()):.2g} % of M): the learned "
             "score does not hold the sampler far from the data, and a few such particles can dominate a "
             "replicate's w2_empirical (compare escaped_fraction_per_replicate with w2_empirical_per_replicate)")
    results["regime"] = neural_regime(escaped=escaped, unstable=results["unstable_replicates"], replicates=R,
                                      tail=ESCAPE_TAIL)
    results["w2_metric"] = ("W2² between the Gaussian fits of the two laws, |m̂|² + B²(Σ, Ĉ), with m̂ and Ĉ the mean "
                            "and centred (1/M) covariance of the M particles: a lower bound on the true W2² "
                            "(the sampler's law is not Gaussian); w2_empirical_debiased subtracts the first-order "
                            "1/M bias of a Gaussian law (particle_bias)")
    pred = sampler.prediction(spectrum, n=int(cfg.data.n), sigma=cfg.train.sigma, tau=cfg.train.tau,
                              batch_size=cfg.train.batch_size, particles=None, **sgd_budget(cfg))
    results["w2_predicted_linear"] = float(pred["total"])
    results["w2_predicted"] = results["w2_predicted_empirical"] = None
    results["status"] = "ok"
    for k in ("w2_empirical", "w2_empirical_debiased", "particle_bias", "w2_predicted_linear"):
        writer.add_scalar(f"eval/{k}", _scalar(results[k]), step)
    writer.add_scalar("eval/escaped_fraction_max", float(escaped.max()), step)
    log_regime(writer, results["regime"], step)
    writer.add_custom_scalars({"W2² (squared Bures–Wasserstein)": {
        "neural score (Gaussian fit, debiased) vs linear-score prediction":
            ["Multiline", ["eval/w2_empirical_debiased", "eval/w2_predicted_linear"]]}})
    _log_figures(writer, spectrum, gaussian_fit(samples)[1], pred, step)
