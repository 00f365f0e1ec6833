"""Config validation: every value is checked before a run does any work (docs/robustness.md).

`validate_config(cfg)` raises `ConfigError` for the first bad value, with the one-line message
`<dotted.key> must be <range>, got <value>`; the `gsm` command prints it as `gsm: error: <message>`
and exits with status 2.

Each config group is checked by its own constructor (issue 14), built here once under `as_config_error`:
the target (`cfg.data.spectrum`, or the texture loader for data.kind=texture), the train group
(`gsm.training.settings.TrainSettings`), the sampler (`cfg.sampler`), the model (the pipeline's builder,
one replicate, a linear one at d = 1) and, for a neural model, the optimizer. Their
one-line ValueErrors (`gsm.checks`) become ConfigErrors. What is left here:

* the top-level keys: device (cpu | cuda | auto; cuda needs a GPU), dtype (float32 | float64),
  replicates ≥ 1, threads auto or ≥ 0, seed an integer, progress a bool, max_memory_gb > 0 or null;
  data.n ≥ 1 (read by the pipeline itself);
* the rules that span groups:
  - the spectrum gives data.dim eigenvalues, finite and ≥ 0 (data=file may hold zeros);
  - a Fourier-diagonal model (model=fourier_linear) if and only if data.kind=texture, and a sampler with a
    diagonal law (`Sampler.has_diagonal_law`) for a texture;
  - train.solver=exact needs a linear model (`model.linear`); a neural model needs a valid optimizer;
  - stability, linear models only: Langevin with γ ≥ 2(λ_min + σ²) diverges even with the exact score
    (theory note §3): an error; DSM-SGD with τ beyond the mean-square stability limit (`sgd_tau_limit`,
    note §2.3) is a warning, returned by `validate_config` (the run goes on and counts the diverged replicates).
"""
from __future__ import annotations

import re
from contextlib import contextmanager

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gsm.checks import choice, number
from gsm.pipeline.kinds import data_kind, model_data_kind, model_declares
from gsm.training.objectives import sgd_mean_square_stable

_ABSENT = object()


class ConfigError(ValueError):
    """A config value out of its range; the message is one line, `<key> must be <range>, got <value>`."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _get(cfg, key):
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)


def _number(cfg, key, *args, **kwargs):
    """`gsm.checks.number` on cfg[key] (skipped when the key is absent), as a ConfigError."""
    v = _get(cfg, key)
    if v is not _ABSENT:
        with as_config_error(key):
            return number(key, v, *args, **kwargs)


def _choice(cfg, key, options):
    v = _get(cfg, key)
    if v is not _ABSENT:
        with as_config_error(key):
            return choice(key, v, options)


def _model_class(cfg):
    if OmegaConf.is_missing(cfg.model, "_target_") or not _get(cfg, "model._target_"):
        raise ConfigError("model._target_ must be a score class path (model=custom model._target_=my_pkg.MyScore), "
                          "got ???")
    target = cfg.model._target_
    if not isinstance(target, str):
        return target
    try:
        return get_object(target)     # Hydra's own lookup, as instantiate does it
    except Exception:
        raise ConfigError(f"model._target_ must be an importable class path, got {target}") from None


def _first_line(e: BaseException) -> str:
    cause = e.__cause__ or e
    return (str(cause).splitlines() or [type(cause).__name__])[0]


@contextmanager
def as_config_error(key: str):
    """Turns an error raised while building `key` from the config into a one-line ConfigError: a constructor's
    check names its key (`model.depth must be an integer >= 0, got -1`), or only its parameter, which gets
    the group's prefix (`width must be ...` → `model.width must be ...`); any other error is
    `<key> must be a valid config, got an error: <its first line>`."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as e:
        msg, group = _first_line(e), key.split(".")[0]
        if re.match(r"[A-Za-z_]\w* must ", msg) and not msg.startswith(f"{group} "):
            msg = f"{group}.{msg}"
        raise ConfigError(msg if " must " in msg else f"{key} must be a valid config, got an error: {msg}") from None


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
    from gsm.training.settings import TrainSettings
    _check_resolvable(cfg)
    _check_top_level(cfg)
    with as_config_error("data.kind"):
        texture = data_kind(cfg) == "texture"
    with as_config_error("train"):
        train = TrainSettings.from_config(cfg.train)
    lam = _target_spectrum(cfg, texture)
    _check_model_fits_data(cfg, texture)
    with as_config_error("sampler"):
        sampler = instantiate(cfg.sampler)
        alphas, stds = sampler.noise_levels(train.sigma)
        if texture and not sampler.has_diagonal_law:
            raise ConfigError(f"sampler must be one with a diagonal (Fourier) law for data.kind=texture (sampler="
                              f"langevin | ddpm | ddim), got sampler._target_={_get(cfg, 'sampler._target_')}")
    model = _build_model(cfg, texture, lam, alphas, stds)
    if not model.linear:
        _check_neural(cfg, model, train)
        return []
    _check_langevin_step(sampler, lam, train.sigma)
    if train.solver != "sgd" or not model.requires_training:
        return []
    return _tau_warning(train, lam, alphas, stds, texture)


def _check_resolvable(cfg) -> None:
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{getattr(e, 'full_key', None) or 'the config'} must be resolvable, got an error: "
                          f"{_first_line(e)}") from None


def _check_top_level(cfg) -> None:
    """The keys outside the groups (conf/config.yaml)."""
    if _choice(cfg, "device", ("cpu", "cuda", "auto")) == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device must be cpu or auto (no CUDA GPU is available), got cuda")
    _choice(cfg, "dtype", ("float32", "float64"))
    _number(cfg, "replicates", 1, integer=True)
    if _get(cfg, "threads") != "auto":
        _number(cfg, "threads", 0, integer=True)
    _number(cfg, "seed", integer=True)
    _choice(cfg, "progress", (True, False))
    cap = _get(cfg, "max_memory_gb")
    if cap not in (None, _ABSENT):
        try:
            number("max_memory_gb", cap, 0, low_open=True)
        except ValueError:
            raise ConfigError(f"max_memory_gb must be a number > 0 or null, got {cap}") from None


def _target_spectrum(cfg, texture: bool) -> torch.Tensor:
    """λ from the data group's own constructors (which check its keys): the ADSN spectrum (n, n//2+1) of
    data.image for a texture, else cfg.data.spectrum (d,), which must give data.dim eigenvalues."""
    _number(cfg, "data.n", 1, integer=True)
    if texture:
        from gsm.data.texture import adsn_spectrum, load_texture
        with as_config_error("data.image"):     # any error reading it names data.image (or its own key)
            return adsn_spectrum(load_texture(cfg.data.image, cfg.data.size, cfg.data.fit), cfg.data.floor)
    from gsm.data.gaussian import check_basis
    with as_config_error("data.basis"):
        check_basis(cfg.data.basis)
    with as_config_error("data.spectrum"):
        lam = torch.as_tensor(instantiate(cfg.data.spectrum)).to(torch.float64)
    d = _get(cfg, "data.dim")
    d = None if d is _ABSENT else d
    if lam.ndim != 1 or not lam.numel() or lam.numel() != (d or lam.numel()) or not torch.isfinite(lam).all() \
            or (lam < 0).any() or not (lam > 0).any():
        shown = lam.tolist() if lam.numel() <= 8 else f"{lam.numel()} values in [{lam.min()}, {lam.max()}]"
        raise ConfigError(f"data.spectrum must give {f'data.dim = {d}' if d else 'd >= 1'} eigenvalues, finite and "
                          f">= 0 (not all 0), got {shown}")
    return lam


def _check_model_fits_data(cfg, texture: bool) -> None:
    """A Fourier-diagonal score (model=fourier_linear) goes with data.kind=texture, and only with it."""
    _model_class(cfg)     # an importable class, or a one-line error
    fourier = model_data_kind(cfg) == "texture"
    if texture and not fourier:
        raise ConfigError(f"model must be fourier_linear or fourier_oracle with data=texture (model=fourier_linear), "
                          f"got model._target_={cfg.model._target_}")
    if fourier and not texture:
        raise ConfigError(f"model._target_ must be a d-dimensional score model with data.dim "
                          f"(model=fourier_linear needs data=texture), got {cfg.model._target_}")


def _build_model(cfg, texture: bool, lam, alphas, stds):
    """The score model as the pipeline builds it, with one replicate, so that its constructor's checks run.
    A linear model's checks do not depend on d: it is built at d = 1 (no d×d matrix per level is allocated,
    415 MB at d = 3072 and 11 levels); a neural or user model at the run's d (the run allocates R of them)."""
    from gsm.scores.nets import build_score_model
    with as_config_error("model"):
        if texture:
            return instantiate(cfg.model, size=lam.shape[-2], replicates=1, levels=alphas.numel(), noise_stds=stds)
        dim = 1 if model_declares(cfg)[0] else lam.numel()
        return build_score_model(cfg.model, dim=dim, replicates=1, alphas=alphas, stds=stds)


def _check_neural(cfg, model, train) -> None:
    """A neural score is trained by DSM-SGD with the optimizer of the optim group."""
    if train.solver == "exact":
        raise ConfigError("train.solver must be sgd for a non-linear model (train.solver=exact needs a linear "
                          "model, model=linear), got exact")
    _number(cfg, "optim.lr", 0, low_open=True)
    with as_config_error("optim"):
        instantiate(cfg.optim)(model.parameters())


def _check_langevin_step(sampler, lam, sigma) -> None:
    """The sampler's step against the target (`Sampler.check_step`: ULA's γ < 2(λ_min + σ²), theory note §3);
    λ_min of a texture is its floor."""
    with as_config_error("sampler"):
        sampler.check_step(float(lam.min()), sigma)


def _tau_warning(train, lam, alphas, stds, fourier: bool) -> list[str]:
    """DSM-SGD beyond its mean-square stability limit: a warning (the run counts the diverged replicates)."""
    limit, worst = sgd_tau_limit(lam, alphas, stds, int(train.batch_size), fourier)
    if train.tau < limit:
        return []
    level = f" at noise level s = {float(stds[worst]):.3g}" if stds.numel() > 1 else ""
    return [f"train.tau = {train.tau} is beyond the SGD mean-square stability limit τ < {limit:.4g}{level} "
            f"(theory note §2.3): replicates are likely to diverge (recorded in diverged_at)"]
