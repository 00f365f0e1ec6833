"""The pipeline: N samples of N(0, Σ) → score fitted by DSM → sampler → W2² against the target.

`run(cfg, output_dir)` is a plain function (tests call it directly); `gsm.cli` wraps it in Hydra.
Every stage is batched over R independent replicates; evaluation is in float64. The config is
validated first (`gsm.validate`), and SIGINT/SIGTERM during a run leave results.json with status
`interrupted` (README, "Robustness").
"""
from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gsm.data import make_gaussian
from gsm.interrupt import SummaryWriter, Terminated, deferred, interruptible
from gsm.io import write_json_atomic
from gsm.metrics import bures_wasserstein2, second_moment
from gsm.models import dsm_optimum
from gsm.nets import ESCAPE_TAIL, build_score_model, escaped_fraction, gaussian_fit, gaussian_fit_w2
from gsm.samplers import Langevin
from gsm.train import empirical_dsm_minimizer, train_linear_dsm, train_score_net
from gsm.validate import as_config_error, validate_config

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
    """Mean and standard error (ddof = 1) over replicates; NaN-free input expected."""
    v = values.to(torch.float64)
    n = v.numel()
    se = float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(v.mean()) if n else float("nan"), "stderr": se, "n": n}


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

    Raises gsm.validate.ConfigError (nothing written) for a bad config; KeyboardInterrupt (SIGINT) or
    `Terminated` (SIGTERM) after writing results.json with status `interrupted`."""
    checks = validate_config(cfg)
    if cfg.get("threads"):     # small batched ops on a busy machine: extra threads wait on each other
        torch.set_num_threads(int(cfg.threads))
    with interruptible():
        if "image" in cfg.data:     # stationary texture: the Fourier-diagonal pipeline (no d×d matrix)
            from gsm.texture_pipeline import run_texture
            return run_texture(cfg, output_dir, checks)
        return _run(cfg, output_dir, checks)


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
        # Langevin: the prediction models a finite SGD budget (empty for DDPM/DDIM and the symmetric variant)
        transient = sgd_budget(cfg, sampler) if learned and not symmetric else {}
        if learned:
            lam_min = float(spectrum.min())
            rate = min(float(s ** 2 * (a ** 2 * lam_min + s ** 2)) for a, s in zip(alphas, stds))
            results["relaxation_times"] = cfg.train.steps / L * cfg.train.tau * rate
            if results["relaxation_times"] < 5:
                warn(f"SGD ran {results['relaxation_times']:.2f} relaxation times (< 5): A is not stationary; "
                     + ("the prediction includes the SGD transient (first order in τ)" if transient else
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
        results["status"] = "ok"
        _log_eval(writer, results, terms, spectrum, C, sampler, A, Sigma64, cfg)
        _log_figures(writer, spectrum, C, pred, cfg.train.steps)
    return results


@contextmanager
def recorded(writer, results: dict, t0: float, out: Path):
    """The body of a run. However it ends, hparams (finished runs) go to TensorBoard, which is flushed, and
    results.json is written; after SIGINT or SIGTERM with status `interrupted` and the signal's name. A first
    signal arriving during that write is raised once it is done (a finished run keeps its status)."""
    try:
        yield
    except KeyboardInterrupt as e:     # SIGINT, or SIGTERM (Terminated)
        results["status"] = "interrupted"
        results["signal"] = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        raise
    finally:
        with deferred():
            results["seconds"] = time.time() - t0
            if results["status"] in ("ok", "diverged"):
                writer.add_hparams(_flatten(results["config"]),
                                   {f"hparam/{k}": _scalar(results.get(k)) for k in W2_KEYS}, run_name=".")
            writer.close()
            write_json_atomic(out / "results.json", results)


def sgd_budget(cfg, sampler) -> dict:
    """Langevin: the prediction's arguments for the finite SGD budget (train.steps from A₀ = model.init),
    which enters exactly through the mean offset and through the transient variance. DDPM/DDIM: none."""
    if not isinstance(sampler, Langevin) or int(cfg.train.steps) == 0:   # untrained: no transient to model
        return {}
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
    """eval/<w2 key> and theory/<term> scalars in double precision, and the Custom Scalars charts that
    overlay measured and predicted W2²."""
    for k in (*W2_KEYS, "w2_exact_stationary"):
        if k in W2_KEYS or k in results:
            writer.add_scalar(f"eval/{k}", _scalar(results.get(k)), step, new_style=True, double_precision=True)
    for k, v in terms.items():
        writer.add_scalar(f"theory/{k}", v, step, new_style=True, double_precision=True)
    writer.add_custom_scalars({"W2² (squared Bures–Wasserstein)": {
        "measured vs predicted": ["Multiline", ["eval/w2_exact", "eval/w2_predicted"]],
        "particles vs predicted with 1/M": ["Multiline", ["eval/w2_empirical", "eval/w2_predicted_empirical"]],
    }})


def _log_eval(writer, results, terms, spectrum, C, sampler, A, Sigma, cfg):
    log_w2(writer, results, terms, int(cfg.train.steps))
    sampler.log_extra(writer, A, Sigma, int(cfg.train.steps))


def _log_figures(writer, spectrum, C, pred, step):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lam = spectrum.sort(descending=True).values
    learned = torch.linalg.eigvalsh(0.5 * (C + C.transpose(-1, -2))).flip(-1).cpu()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    i = torch.arange(1, lam.numel() + 1)
    for r in range(min(learned.shape[0], 32)):
        ax.plot(i, learned[r], color="tab:orange", alpha=0.2, lw=0.8)
    ax.plot(i, learned.mean(0), color="tab:orange", label="sampler covariance (mean over replicates)")
    ax.plot(i, lam, "k--", label="target spectrum λ")
    ax.set(xscale="log", yscale="log", xlabel="index i", ylabel="eigenvalue")
    ax.legend(fontsize=7)
    fig.tight_layout()
    writer.add_figure("spectrum/target_vs_learned", fig, step)
    try:
        from gsm.theory import plot_kernels
    except ImportError:
        return
    writer.add_figure("theory/kernels", plot_kernels(pred), step)


def summary_table(results: dict) -> str:
    """The short table printed at the end of a run."""
    lines = [f"status: {results['status']}   unstable replicates: {results.get('unstable_replicates', 0)}"
             f"   seconds: {results.get('seconds', 0):.1f}"]
    for k in (*W2_KEYS, "w2_empirical_debiased", "w2_predicted_linear"):   # the last two: neural scores
        v = results.get(k)
        if isinstance(v, dict):
            lines.append(f"  {k:<24} {v['mean']:.6g} ± {v['stderr']:.2g} (s.e., {v['n']} replicates)")
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
    escaped = escaped_fraction(Sigma, samples).cpu()
    results["escaped_fraction_per_replicate"] = escaped.tolist()
    if (escaped > 0).any():
        warn(f"{int((escaped > 0).sum())} of {len(escaped)} replicates have particles beyond the {ESCAPE_TAIL:g} "
             f"tail of N(0, Σ) (up to {100 * float(escaped.max()):.2g} % of M): the learned score does not hold "
             "the sampler far from the data, and a few such particles can dominate a replicate's w2_empirical "
             "(compare escaped_fraction_per_replicate with w2_empirical_per_replicate)")
    results["w2_metric"] = ("W2² between the Gaussian fits of the two laws, |m̂|² + B²(Σ, Ĉ), with m̂ and Ĉ the mean "
                            "and centred (1/M) covariance of the M particles: a lower bound on the true W2² "
                            "(the sampler's law is not Gaussian); w2_empirical_debiased subtracts the first-order "
                            "1/M bias of a Gaussian law (particle_bias)")
    pred = sampler.prediction(spectrum, n=int(cfg.data.n), sigma=cfg.train.sigma, tau=cfg.train.tau,
                              batch_size=cfg.train.batch_size, particles=None, **sgd_budget(cfg, sampler))
    results["w2_predicted_linear"] = float(pred["total"])
    results["w2_predicted"] = results["w2_predicted_empirical"] = None
    results["status"] = "ok"
    for k in ("w2_empirical", "w2_empirical_debiased", "particle_bias", "w2_predicted_linear"):
        writer.add_scalar(f"eval/{k}", _scalar(results[k]), step, new_style=True, double_precision=True)
    writer.add_scalar("eval/escaped_fraction_max", float(escaped.max()), step, new_style=True, double_precision=True)
    writer.add_custom_scalars({"W2² (squared Bures–Wasserstein)": {
        "neural score (Gaussian fit, debiased) vs linear-score prediction":
            ["Multiline", ["eval/w2_empirical_debiased", "eval/w2_predicted_linear"]]}})
    _log_figures(writer, spectrum, gaussian_fit(samples)[1], pred, step)
