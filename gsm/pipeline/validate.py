"""Config validation: every value is checked before a run does any work (README, "Robustness").

`validate_config(cfg)` raises `ConfigError` for the first bad value, with the one-line message
`<dotted.key> must be <range>, got <value>`; the `gsm` command prints it as `gsm: error: <message>`
and exits with status 2. Only keys present in the composed config are checked (sampler.gamma for
Langevin only, data.image for data=texture only, ...). What is checked:

* top level: device (cpu | cuda | auto; cuda needs a GPU), dtype (float32 | float64), replicates ≥ 1,
  threads auto or ≥ 0, seed an integer;
* data: dim ≥ 1, n ≥ 1, basis, the spectrum's parameters and the spectrum itself (data.dim eigenvalues,
  finite and > 0); data=texture: size ≥ 2, fit, floor > 0, n ≥ 1, and the image loads;
* model: _target_ set and importable; model=fourier_linear if and only if data=texture; model.init;
* train: solver (exact needs a linear model), sigma > 0, tau > 0, batch_size ≥ 1, steps ≥ 0, sampling,
  log_every ≥ 0; optim.lr > 0;
* sampler: Langevin gamma > 0, steps ≥ 0, particles ≥ 2, init_var ≥ 0, particles_from; DDPM/DDIM
  T ≥ 1, 0 ≤ t_min < T, 0 < beta_start < beta_end < 1 (scaled: T > 20 and β_T = beta_end·1000/T < 1),
  steps null or in [1, T − t_min], variance, final, eta ∈ [0, 1], particles ≥ 2, init_var ≥ 0;
* stability, linear models only (model=linear | oracle | fourier_linear):
  - Langevin with γ ≥ 2(λ_min + σ²) diverges even with the exact score (theory note §3): an error;
  - DSM-SGD with τ beyond the mean-square stability limit (`sgd_tau_limit`, note §2.3) is a warning,
    returned by `validate_config` (the run goes on and counts the diverged replicates).
"""
from __future__ import annotations

import importlib
import math
from contextlib import contextmanager

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gsm.theory.sgd import sgd_mean_square_stable

_ABSENT = object()


class ConfigError(ValueError):
    """A config value out of its range; the message is one line, `<key> must be <range>, got <value>`."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _get(cfg, key):
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(cfg, key, low=None, high=None, *, low_open=False, high_open=False, integer=False, none_ok=False):
    """Checks that cfg[key] is a finite number (an integer with `integer`) in the given range; returns it,
    or None when the key is absent (or null with `none_ok`)."""
    v = _get(cfg, key)
    if v is _ABSENT or (v is None and none_ok):
        return None
    rng = "an integer " if integer else ""
    if low is not None and high is not None:
        rng += f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        rng += f"{'>' if low_open else '>='} {low}"
    rng = rng.strip()
    ok = _is_number(v) and math.isfinite(v) and (not integer or float(v).is_integer())
    ok = ok and (low is None or (v > low if low_open else v >= low))
    ok = ok and (high is None or (v < high if high_open else v <= high))
    if not ok:
        if not rng or (_is_number(v) and not math.isfinite(v)):
            rng = f"finite and {rng}" if rng else "a finite number"
        raise ConfigError(f"{key} must be {rng}{' or null' if none_ok else ''}, got {v}")
    return int(v) if integer else float(v)


def _choice(cfg, key, options):
    v = _get(cfg, key)
    if v is not _ABSENT and (not isinstance(v, (str, bool)) or v not in options):
        raise ConfigError(f"{key} must be one of {' | '.join(map(str, options))}, got {v}")
    return None if v is _ABSENT else v


def _model_class(cfg):
    if OmegaConf.is_missing(cfg.model, "_target_") or not _get(cfg, "model._target_"):
        raise ConfigError("model._target_ must be a score class path (model=custom model._target_=my_pkg.MyScore), "
                          "got ???")
    target = cfg.model._target_
    if not isinstance(target, str):
        return target
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):      # the longest importable module prefix, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for p in parts[i:]:
                obj = getattr(obj, p)
            return obj
        except AttributeError:
            break
    raise ConfigError(f"model._target_ must be an importable class path, got {target}")


def _first_line(e: BaseException) -> str:
    cause = e.__cause__ or e
    return (str(cause).splitlines() or [type(cause).__name__])[0]


@contextmanager
def as_config_error(key: str):
    """Turns an error raised while building `key` from the config (a constructor's check, e.g.
    `model.depth must be an integer >= 0, got -1`) into a one-line ConfigError naming it."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as e:
        msg = _first_line(e)
        raise ConfigError(msg if " must " in msg else f"{key} must be a valid config, got an error: {msg}") from None


def _instantiate(node, key):
    """instantiate(node), its errors turned into a ConfigError naming `key`."""
    with as_config_error(key):
        return instantiate(node)


def sgd_tau_limit(lam, alphas, stds, batch_size: int, fourier: bool = False):
    """The largest τ for which DSM-SGD on a linear score is mean-square stable, min over the noise levels.

    Full matrix (theory note §2.3, online Gaussian data): with m_j = α²λ_j + s², stable iff
    τs²(1+1/b)m_max < 2 and σ⁴R_b = Σ_j τs²m_j / [b(2 − τs²(1+1/b)m_j)] < 1 (R_b increases with τ:
    the limit is found by bisection). Each level l is taken with σ → s_l, λ → α_l²λ and the whole batch b:
    exact for b = 1 (a sample's update is then one-level SGD with step τ), an approximation otherwise.
    fourier (model=fourier_linear): every frequency is a scalar recursion, stable iff
    τs²m(1 + κ/b) < 2 (κ = 1 at a complex frequency, 2 at a real one; `gsm.theory.fourier.sgd_variance_fourier`).
    Returns (τ_max, the index of the worst level).
    """
    lam = torch.as_tensor(lam, dtype=torch.float64)
    b = float(batch_size)
    limits = []
    for a, s in zip(alphas.tolist(), stds.tolist()):
        m = a * a * lam + s * s
        if fourier:
            from gsm.data.texture import kappa
            limits.append(float((2 / (s * s * m * (1 + kappa(lam.shape[-2]) / b))).min()))
            continue
        lam_l = a * a * lam.flatten()                    # the level's data α_l x has spectrum α_l²λ
        lo, hi = 0.0, 2 / (s * s * (1 + 1 / b) * float(m.max()))
        for _ in range(100):
            tau = 0.5 * (lo + hi)
            stable = sgd_mean_square_stable(lam_l, sigma=s, tau=tau, batch_size=int(b))
            lo, hi = (tau, hi) if stable else (lo, tau)
        limits.append(lo)
    worst = min(range(len(limits)), key=limits.__getitem__)
    return limits[worst], worst


def validate_config(cfg: DictConfig) -> list[str]:
    """Checks `cfg` (a composed gsm config); raises ConfigError for the first bad value (module docstring).
    Returns the warnings to record before training (SGD beyond its mean-square stability limit)."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{getattr(e, 'full_key', None) or 'the config'} must be resolvable, got an error: "
                          f"{_first_line(e)}") from None
    # top level
    device = _choice(cfg, "device", ("cpu", "cuda", "auto"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device must be cpu or auto (no CUDA GPU is available), got cuda")
    _choice(cfg, "dtype", ("float32", "float64"))
    _number(cfg, "replicates", 1, integer=True)
    if _get(cfg, "threads") != "auto":
        _number(cfg, "threads", 0, integer=True)
    if _get(cfg, "seed") is not _ABSENT and not (_is_number(cfg.seed) and float(cfg.seed).is_integer()):
        raise ConfigError(f"seed must be an integer, got {cfg.seed}")
    texture = "image" in cfg.data
    # data
    _number(cfg, "data.n", 1, integer=True)
    if texture:
        if not isinstance(cfg.data.image, str) or not cfg.data.image:
            raise ConfigError(f"data.image must be a bundled image name or a .png path, got {cfg.data.image}")
        _number(cfg, "data.size", 2, integer=True)
        _choice(cfg, "data.fit", ("crop", "resize"))
        _number(cfg, "data.floor", 0, low_open=True)
    else:
        d = _number(cfg, "data.dim", 1, integer=True)
        _choice(cfg, "data.basis", ("random", "identity"))
        for k in ("scale", "value", "high", "low"):
            _number(cfg, f"data.spectrum.{k}", 0, low_open=True)
        _number(cfg, "data.spectrum.exponent")
        _number(cfg, "data.spectrum.fraction", 0, 1)
        ev = _get(cfg, "data.spectrum.eigenvalues")
        if ev is not _ABSENT:
            vals = OmegaConf.to_container(ev) if isinstance(ev, ListConfig) else ev
            if not (isinstance(vals, list) and len(vals) == d
                    and all(_is_number(x) and math.isfinite(x) and x > 0 for x in vals)):
                raise ConfigError(f"data.spectrum.eigenvalues must be data.dim = {d} finite numbers > 0, got {vals}")
    # model
    cls = _model_class(cfg)
    from gsm.scores.linear import LinearScore
    from gsm.scores.fourier import FourierLinearScore
    fourier = isinstance(cls, type) and issubclass(cls, FourierLinearScore)
    linear = fourier or (isinstance(cls, type) and issubclass(cls, LinearScore))
    if texture and not fourier:
        raise ConfigError(f"model must be fourier_linear with data=texture (model=fourier_linear), "
                          f"got model._target_={cfg.model._target_}")
    if fourier and not texture:
        raise ConfigError(f"model._target_ must be a d-dimensional score model with data.dim "
                          f"(model=fourier_linear needs data=texture), got {cfg.model._target_}")
    if linear:
        _choice(cfg, "model.init", ("zeros", "identity", "noise") if fourier else ("zeros", "identity"))
    # train, optim
    solver = _choice(cfg, "train.solver", ("sgd", "exact"))
    if solver == "exact" and not linear:
        raise ConfigError("train.solver must be sgd for a non-linear model (train.solver=exact needs a linear "
                          "model, model=linear), got exact")
    sigma = _number(cfg, "train.sigma", 0, low_open=True)
    tau = _number(cfg, "train.tau", 0, low_open=True)
    b = _number(cfg, "train.batch_size", 1, integer=True)
    _number(cfg, "train.steps", 0, integer=True)
    _choice(cfg, "train.sampling", ("with_replacement", "epochs"))
    _number(cfg, "train.log_every", 0, integer=True)
    _number(cfg, "optim.lr", 0, low_open=True)
    # sampler
    langevin = _get(cfg, "sampler.gamma") is not _ABSENT
    _number(cfg, "sampler.particles", 2, integer=True)
    _number(cfg, "sampler.init_var", 0)
    if langevin:
        gamma = _number(cfg, "sampler.gamma", 0, low_open=True)
        _number(cfg, "sampler.steps", 0, integer=True)
        _choice(cfg, "sampler.particles_from", ("chains", "law"))
    elif _get(cfg, "sampler.T") is not _ABSENT and _get(cfg, "sampler.scheme") is _ABSENT:   # DDPM/DDIM (sampler=vp: its constructor checks)
        T = _number(cfg, "sampler.T", 1, integer=True)
        t_min = _number(cfg, "sampler.t_min", 0, T - 1, integer=True)
        b0 = _number(cfg, "sampler.beta_start", 0, 1, low_open=True, high_open=True)
        b1 = _number(cfg, "sampler.beta_end", b0 or 0, 1, low_open=True, high_open=True)
        if _get(cfg, "sampler.scaled") is True:
            _number(cfg, "sampler.T", 20, low_open=True, integer=True)
            if not b1 * 1000 / T < 1:
                raise ConfigError(f"sampler.beta_end must be < T/1000 = {T / 1000} with scaled betas "
                                  f"(β_T = beta_end·1000/T < 1), got {b1}")
        _number(cfg, "sampler.steps", 1, T - (t_min or 0), integer=True, none_ok=True)
        _choice(cfg, "sampler.variance", ("beta", "beta_tilde"))
        _choice(cfg, "sampler.final", ("none", "rescale", "tweedie"))
        _number(cfg, "sampler.eta", 0, 1)
    # the target spectrum, then stability (linear models)
    if texture:
        from gsm.data.texture import adsn_spectrum, load_texture
        with as_config_error("data.image"):     # any error reading it names data.image (or its own key)
            lam = adsn_spectrum(load_texture(cfg.data.image, cfg.data.size, cfg.data.fit), cfg.data.floor)
    else:
        lam = _instantiate(cfg.data.spectrum, "data.spectrum")
        lam = torch.as_tensor(lam, dtype=torch.float64) if not torch.is_tensor(lam) else lam.to(torch.float64)
        from_file = _get(cfg, "data.path") is not _ABSENT     # data=file: d from the file, zeros allowed
        if from_file and lam.ndim == 1 and (lam >= 0).all():
            d = lam.numel()
        if lam.ndim != 1 or lam.numel() != d or not torch.isfinite(lam).all() or not (lam > 0).all() and not from_file:
            shown = lam.tolist() if lam.numel() <= 8 else f"{lam.numel()} values in [{lam.min()}, {lam.max()}]"
            raise ConfigError(f"data.spectrum must give data.dim = {d} eigenvalues, finite and > 0, got {shown}")
    if not linear:
        return []
    alphas, stds = _instantiate(cfg.sampler, "sampler").noise_levels(sigma)
    if langevin:
        bound = 2 * (float(lam.min()) + sigma ** 2)
        if not gamma < bound:
            raise ConfigError(f"sampler.gamma must be < 2(λ_min + σ²) = {bound:.6g} (Langevin diverges even with "
                              f"the exact score, theory note §3), got {cfg.sampler.gamma}")
    learned = solver == "sgd" and (not _get(cfg, "model.oracle") if fourier else cls.requires_training)
    if not learned:
        return []
    limit, worst = sgd_tau_limit(lam, alphas, stds, b, fourier)
    if tau >= limit:
        level = f" at noise level s = {float(stds[worst]):.3g}" if stds.numel() > 1 else ""
        return [f"train.tau = {cfg.train.tau} is beyond the SGD mean-square stability limit τ < {limit:.4g}{level} "
                f"(theory note §2.3): replicates are likely to diverge (recorded in diverged_at)"]
    return []
