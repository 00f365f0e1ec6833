"""What a run records: results.json (statuses, means with standard errors, the prediction's terms,
the regime verdict), TensorBoard scalars and the console summary. Shared by every backend of the
pipeline (`gsm.pipeline.run`), so each number is recorded once, the same way."""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from gsm.pipeline.interrupt import Terminated, deferred
from gsm.pipeline.terms import TERM_SOURCE, term_shares, z_score
from gsm.pipeline.status import Heartbeat, error_record, process_record, write_results
from gsm.theory.memorization import MEMORIZED_RATIO, bootstrap_stderr, memorized_share
from gsm.theory.regime import RELAXATION_TIMES_MIN, Regime, relaxation_times, verdict_lines

log = logging.getLogger("gsm")


W2_KEYS = ("w2_exact", "w2_empirical", "w2_predicted", "w2_predicted_empirical")


OT_KEYS = ("w2_ot", "w2_ot_floor", "w2_ot_debiased", "w2_ot_surrogate", "w2_ot_gap", "w2_sliced_debiased",
           "memorized_fraction", "memorized_fraction_fresh")
DIAGNOSTICS = ("d_over_n", "eps_tau")     # numbers of a prediction that are not terms of it


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


def record_failure(out: Path, config: dict, checks: list, e: Exception) -> None:
    """results.json with status `failed` for an exception raised before `recorded` took over (building
    the backend, the writer, ...); `recorded` has written it already for one raised inside. config: the
    resolved config (`RunSpec.config`)."""
    path = out / "results.json"
    try:
        if path.exists() and json.loads(path.read_text()).get("status") != "running":
            return
        out.mkdir(parents=True, exist_ok=True)
        write_results(path, {"status": "failed", "error": error_record(e),
                             "config": copy.deepcopy(config), "warnings": list(checks)})
    except (OSError, ValueError):     # nowhere to write: gsm's message and exit status still say it
        pass


def start(config: dict, output_dir, checks: list):
    """The run's folder (created), its results dict (status running, `config`: the resolved config,
    `RunSpec.config`) and its warn(msg), which logs msg and keeps it in results["warnings"]; the
    validation warnings go first."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"status": "running", "config": copy.deepcopy(config), "warnings": []}

    def warn(msg):
        log.warning(msg)
        results["warnings"].append(msg)

    for msg in checks:     # e.g. τ beyond the SGD stability limit
        warn(msg)
    return out, results, warn


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
            from gsm.pipeline.board import log_hparams     # board builds on this module

            log_hparams(writer, results)
        writer.close()
    except Exception as e:
        if results["status"] in ("ok", "diverged", "running"):
            results["status"], results["error"] = "failed", error_record(e)
        return e
    return None


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
        results["regime"] = diverged_regime(results)
    return bool(unstable.all())


def diverged_regime(results: dict) -> dict:
    """The verdict of a run with no replicate left (status diverged): out of regime, with the knob."""
    at = [k for k in results.get("diverged_at", []) if k >= 0]
    if at:
        why = (f"DSM-SGD diverged in {len(at)} of {results['unstable_replicates']} replicates (first at step "
               f"{min(at)}): lower train.tau (or raise train.batch_size); the warnings give the stability limit")
    else:
        why = "the sampler is unstable with every learned score: lower the sampler's step (sampler.gamma)"
    verdict = Regime()
    verdict.add(1.0, f"every replicate diverged, no W2² to measure: {why}")
    return verdict.as_dict("the stability of the run (no replicate left to compare with the prediction)")


def finite(x: torch.Tensor) -> torch.Tensor:
    """Per replicate (leading dim): every entry finite. (R, ...) → (R,) bool."""
    return torch.isfinite(x).flatten(1).all(1)


def as_scalar(v):
    if isinstance(v, dict):
        v = v.get("mean")
    return float("nan") if v is None else float(v)


def log_w2(writer, results: dict, terms: dict, step: int, image: bool = True) -> None:
    """eval/<w2 key> and theory/<term> scalars, regime/, and the comparison of measured and predicted W2²
    (image, table, Custom Scalars charts: `gsm.pipeline.board`). Plain (float32) scalar summaries: TensorBoard's default loader skips double-precision
    tensors; the full-precision numbers are in results.json."""
    for k in (*W2_KEYS, "w2_exact_stationary"):
        if k in W2_KEYS or k in results:
            writer.add_scalar(f"eval/{k}", as_scalar(results.get(k)), step)
    from gsm.pipeline.board import log_comparison     # board builds on term_shares below

    for k, v in terms.items():
        writer.add_scalar(f"theory/{k}", v, step)
    log_regime(writer, results.get("regime"), step)
    log_comparison(writer, results, step, image)


def log_regime(writer, regime: dict | None, step: int) -> None:
    """regime/ok (1 or 0) as a scalar and the verdict with its reasons as text (TensorBoard's Text tab)."""
    if regime:
        writer.add_scalar("regime/ok", float(regime["ok"]), step)
        writer.add_text("regime/verdict", "  \n".join(verdict_lines(regime)), step)


def summary_table(results: dict) -> str:
    """The short table printed at the end of a run: the verdict (every status has one), the status, the
    measured and predicted W2², and w2_predicted term by term with each term's share."""
    verdict = verdict_lines(results.get("regime")) or [f"regime: no verdict (status {results['status']})"]
    lines = [*verdict,
             f"status: {results['status']}   unstable replicates: {results.get('unstable_replicates', 0)}"
             f"   seconds: {results.get('seconds', 0):.1f}"]
    # then neural scores' and data=mixture's keys
    for k in (*W2_KEYS, "w2_empirical_debiased", "w2_predicted_linear", *OT_KEYS):
        v = results.get(k)
        if isinstance(v, dict):
            se = "n/a" if v["stderr"] is None else format(v["stderr"], ".2g")
            lines.append(f"  {k:<24} {v['mean']:.6g} ± {se} (s.e., {v['n']} replicates)")
        elif v is not None:
            e = results.get(k + "_error")
            bar = f" ± {e:.2g} (its error bar: what the first order neglects)" if e is not None else ""
            lines.append(f"  {k:<24} {v:.6g}{bar}")
    if isinstance(results.get("mode_weights"), dict):
        w = results["mode_weights"]
        se = w["stderr"] or [float("nan")] * len(w["mean"])
        lines.append("  mode_weights             " + ", ".join(f"{m:.3f} ± {s:.2g} (true {t:.3f})"
                                                              for m, s, t in zip(w["mean"], se, w["true"])))
    z = {k: v for k, v in (results.get("z") or {}).items() if v is not None}
    if z:
        lines.append("  z (both error bars)      " + ", ".join(f"{k} {v:+.2f}" for k, v in z.items()))
    scale = relative_scale(results)
    if scale:
        lines.append(scale)
    shares = term_shares(results)
    if shares:
        lines.append("  w2_predicted term by term (share):")
        lines += [f"    {name:<22} {value:.4g}  ({100 * share:.0f} %){TERM_SOURCE.get(name, '')}"
                  for name, value, share in shares]
    return "\n".join(lines)


FAR_FROM_DATA = 0.5     # W2²/tr Σ above it: the learned sampler's law is far from the data's


def relative_scale(results: dict) -> str | None:
    """The console's line putting W2² on the data's scale: w2_exact (or w2_empirical) / tr Σ, said plainly
    when the sampler's law is far from the data's even if the prediction is right."""
    rel = results.get("w2_relative")
    if rel is None:
        return None
    line = f"  W2² / tr Σ               {rel:.3g} (tr Σ = {results['trace_sigma']:.4g})"
    if rel > FAR_FROM_DATA:
        line += (" — the learned sampler is FAR from the data: its law misses most of Σ's variance "
                 "(whether or not the theory predicts it)")
    return line


def record_scale(results: dict, trace_sigma: float) -> None:
    """results["trace_sigma"] and results["w2_relative"]: the measured W2² (w2_exact, else w2_empirical) / tr Σ."""
    results["trace_sigma"] = float(trace_sigma)
    m = results.get("w2_exact") if isinstance(results.get("w2_exact"), dict) else results.get("w2_empirical")
    if isinstance(m, dict) and trace_sigma > 0:
        results["w2_relative"] = m["mean"] / float(trace_sigma)


def record_prediction(results: dict, pred: dict, warn) -> dict:
    """The prediction's float terms (results["prediction_terms"]), w2_predicted (without the 1/M term:
    compare with w2_exact), w2_predicted_empirical (with it: compare with w2_empirical), the diagnostics
    and the prediction's warnings. Returns the terms."""
    terms = {k: float(v) for k, v in pred.items() if isinstance(v, (int, float)) and k not in DIAGNOSTICS}
    results["prediction_terms"] = terms
    results["w2_predicted"] = terms["total"] - terms.get("particles", 0.0)
    results["w2_predicted_empirical"] = terms["total"]
    results["diagnostics"] = {k: pred[k] for k in DIAGNOSTICS if k in pred}
    rem = pred.get("remainders")
    if rem is not None:       # the prediction's own error bar (gsm.theory.remainder)
        results["prediction_remainders"] = {**rem["terms"], **{k: {"not_estimated": why}
                                                              for k, why in rem["not_estimated"].items()}}
        results["w2_predicted_error"] = rem["error"]
        results["w2_predicted_empirical_error"] = rem["error_empirical"]
    for w in pred.get("warnings", []):
        warn(w)
    return terms


def measured_stderr(results: dict) -> dict:
    """The s.e. of w2_exact and w2_empirical (where measured): the resolution the verdict holds a prediction to."""
    return {k: results[k]["stderr"] for k in ("w2_exact", "w2_empirical") if isinstance(results.get(k), dict)}


def combined_z(results: dict) -> dict:
    """`z_score` for w2_exact and w2_empirical against w2_predicted(_empirical), with both error bars."""
    z = {}
    for measured, predicted in (("w2_exact", "w2_predicted"), ("w2_empirical", "w2_predicted_empirical")):
        if isinstance(results.get(measured), dict):
            z[measured] = z_score(results[measured], results.get(predicted), results.get(predicted + "_error"))
    return z


def record_relaxation(results: dict, warn, train, alphas, stds, lam_min: float, transient: str, drift=None):
    """How far SGD ran toward stationarity (theory note §12): relaxation_times (the slowest level) and
    per level, with a warning below RELAXATION_TIMES_MIN saying how the prediction treats it (`transient`);
    drift: the objective's κ_l (`sgd_drift`; None: DSM's s_l²). Returns the per-level times (L,)."""
    times = relaxation_times(int(train.steps), train.tau, alphas, stds, lam_min, drift=drift)
    results["relaxation_times"] = float(times.min())
    results["relaxation_times_per_level"] = times.tolist()
    if results["relaxation_times"] < RELAXATION_TIMES_MIN:
        warn(f"SGD ran {results['relaxation_times']:.2f} relaxation times (< {RELAXATION_TIMES_MIN:g}) at "
             f"the slowest level: the score is not stationary; {transient}")
    return times


def record_memorization(results: dict, particles: torch.Tensor, train: torch.Tensor, fresh: torch.Tensor) -> None:
    """memorized_fraction {mean, stderr, n}: the share of particles with d₁/d₂ < 1/3 to their replicate's
    training set (`gsm.theory.memorization`), mean over replicates, bootstrap s.e. over them (N ≥ 2); and
    memorized_fraction_fresh, the same for fresh samples of the data (its chance level: in low d a new
    sample often lies close to one training point)."""
    if train.shape[-2] < 2:
        return
    for key, x in (("memorized_fraction", particles), ("memorized_fraction_fresh", fresh)):
        share = memorized_share(x, train)
        results[key] = {"mean": float(share.mean()), "stderr": bootstrap_stderr(share), "n": share.numel(),
                        "ratio": MEMORIZED_RATIO}


def dsm_loss_logger(writer):
    """The trainers' callback(step, loss): the train/dsm_loss scalar."""
    return lambda k, loss: writer.add_scalar("train/dsm_loss", loss, k)
