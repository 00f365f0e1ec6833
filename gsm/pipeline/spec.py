"""One run's specification: the typed objects of a run, built once from the composed config.

`RunSpec.from_config(cfg)` is called by the entry point (`gsm.pipeline.run.run`), and it is the one place
that reads the DictConfig. Each group is built by its own constructor, whose one-line ValueErrors become
`ConfigError`s (`as_config_error`):

| field | what | built from |
|---|---|---|
| `data` | the target: `GaussianData` (λ (d,), N, basis), `TextureData` (the image, its ADSN λ, N) or `MixtureData` (a Gaussian mixture, N) | `cfg.data` |
| `model` | the score class and its options (`ModelSpec`); the model is built by the backend at the sampler's levels | `cfg.model` |
| `objective` | the training objective (`gsm.training.objectives.DSM` or a user class), instantiated once | `cfg.objective` (absent: DSM) |
| `sampler` | the sampler, instantiated once | `cfg.sampler` |
| `train` | `gsm.training.settings.TrainSettings` | `cfg.train` |
| `optimizer` | a non-linear model's torch optimizer factory (`_partial_`), else None | `cfg.optim` |
| `settings` | `RunSettings`: seed, device, dtype, replicates, progress, threads, max_memory_gb, figures | the top-level keys |
| `config` | the resolved config as a plain dict (results.json's `config` key) | `cfg` |

Validation (`gsm.pipeline.validate.validate`), the memory estimate (`gsm.pipeline.memory`), the record and
the backends take the spec.
"""
from __future__ import annotations

import copy
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gsm.checks import choice, number
from gsm.pipeline.kinds import data_kind, linear_score_mismatch, model_data_kind, model_declares, model_is_exact
from gsm.training.objectives import DSM
from gsm.training.settings import TrainSettings

_ABSENT = object()
FILE_SPECTRUM = "gsm.data.gaussian.file_spectrum"    # data=file: d is the file's length
DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "float64")


class ConfigError(ValueError):
    """A config value out of its range; the message is one line, `<key> must be <range>, got <value>`."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


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


def checked(key: str, check: Callable, value, *args, **kwargs):
    """check(key, value, *args, **kwargs) (a `gsm.checks` function), its ValueError as a ConfigError."""
    with as_config_error(key):
        return check(key, value, *args, **kwargs)


@dataclass(frozen=True)
class GaussianData:
    """A d-dimensional target N(0, Σ), Σ = U diag(λ) Uᵀ: λ (d,) float64 (`data.spectrum`), N samples per
    replicate (`data.n`) and U's basis (`data.basis`: random | identity)."""

    spectrum: torch.Tensor
    n: int
    basis: str
    kind = "gaussian"

    @property
    def dim(self) -> int:
        return self.spectrum.numel()


@dataclass(frozen=True)
class TextureData:
    """A stationary n×n texture (data.kind=texture): the source image u (n, n), its ADSN spectrum λ
    (n, n//2+1) (floored at `data.floor`) and N samples per replicate."""

    image: torch.Tensor
    spectrum: torch.Tensor
    n: int
    kind = "texture"

    @property
    def size(self) -> int:
        return self.image.shape[-1]

    @property
    def dim(self) -> int:
        return self.size ** 2


@dataclass(frozen=True)
class MixtureData:
    """A Gaussian mixture (data.kind=mixture, `gsm.data.mixture.GaussianMixture`, from `data.mixture`), N samples
    per replicate, and M' = `data.ot_particles`, the particles per replicate of the exact-OT W2²; `spectrum`
    is λ of its Gaussian surrogate N(0, Σ) (what the linear paths and the prediction read)."""

    mixture: Any
    n: int
    ot_particles: int
    kind = "mixture"

    @cached_property
    def spectrum(self) -> torch.Tensor:
        return self.mixture.surrogate().eigenvalues

    @property
    def dim(self) -> int:
        return self.mixture.dim

    @property
    def is_gaussian(self) -> bool:
        return self.mixture.is_gaussian

    @property
    def description(self) -> str:
        return f"a {self.mixture.components}-component Gaussian mixture"

    def surrogate(self):
        return self.mixture.surrogate()


@dataclass(frozen=True)
class DatasetData:
    """Real data (data.kind=dataset, `gsm.data.pool.SamplePool`, from `data.pool`: data=digits | patches), N
    training samples per replicate drawn from the pool, and M' = `data.ot_particles`; `spectrum` is λ of the
    pool's Gaussian surrogate N(0, Σ). No exact score."""

    pool: Any
    n: int
    ot_particles: int
    kind = "dataset"
    is_gaussian = False

    @cached_property
    def spectrum(self) -> torch.Tensor:
        return self.pool.surrogate().eigenvalues

    @property
    def dim(self) -> int:
        return self.pool.dim

    @property
    def description(self) -> str:
        return self.pool.description

    def surrogate(self):
        return self.pool.surrogate()


@dataclass(frozen=True)
class EvalSettings:
    """The eval group's keys (conf/config.yaml): probe, the Gaussian-structure probe of the score at every level
    (`gsm.theory.probe`, off by default: it costs a sampler pass of Q points a level), and Q = probe_points."""

    probe: bool = False
    probe_points: int = 2048

    def __post_init__(self):
        checked("eval.probe", choice, self.probe, (True, False))
        object.__setattr__(self, "probe_points", checked("eval.probe_points", number, self.probe_points, 2,
                                                         integer=True))

    @classmethod
    def from_config(cls, cfg) -> EvalSettings:
        node = _get(cfg, "eval")
        return cls() if node is _ABSENT or node is None else cls(**OmegaConf.to_container(node, resolve=True))


@dataclass(frozen=True)
class ModelSpec:
    """The score model's class and its options (the model group's keys, `_target_` included, for
    `gsm.scores.nets.build_score_model`), with what the class declares (`gsm.scores.base.ScoreModel`)."""

    cls: Any
    options: dict

    @property
    def linear(self) -> bool:
        return model_declares(self.cls)[0]

    @property
    def requires_training(self) -> bool:
        return model_declares(self.cls)[1]

    @property
    def data_kind(self) -> str:
        return model_data_kind(self.cls)

    @property
    def exact(self) -> bool:
        return model_is_exact(self.cls)

    @property
    def init(self):
        """A₀ of the SGD (model.init; zeros when the class has none)."""
        return self.options.get("init", "zeros")

    @property
    def target(self) -> str:
        return str(self.options.get("_target_"))


@dataclass(frozen=True)
class RunSettings:
    """The top-level keys (conf/config.yaml): seed (an integer), device (cpu | cuda | auto; cuda needs a
    GPU), dtype (the training dtype, float32 | float64), replicates R ≥ 1, progress (a bool), threads
    (auto or ≥ 0), max_memory_gb (> 0 or None: the memory available) and figures (a bool: the run's
    figures and images drawn or not, the samplers' own too; sampler=vp's trajectory figure also has sampler.figure)."""

    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    replicates: int = 64
    progress: bool = True
    threads: Any = "auto"
    max_memory_gb: float | None = None
    figures: bool = True

    def __post_init__(self):
        self._check()
        object.__setattr__(self, "seed", int(self.seed))      # 3.0 passes the integer check
        object.__setattr__(self, "replicates", int(self.replicates))

    def _check(self) -> None:
        if checked("device", choice, self.device, DEVICES) == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device must be cpu or auto (no CUDA GPU is available), got cuda")
        checked("dtype", choice, self.dtype, DTYPES)
        checked("replicates", number, self.replicates, 1, integer=True)
        if self.threads != "auto":
            checked("threads", number, self.threads, 0, integer=True)
        checked("seed", number, self.seed, integer=True)
        checked("progress", choice, self.progress, (True, False))
        checked("figures", choice, self.figures, (True, False))
        if self.max_memory_gb is not None:
            try:
                number("max_memory_gb", self.max_memory_gb, 0, low_open=True)
            except ValueError:
                raise ConfigError(f"max_memory_gb must be a number > 0 or null, got {self.max_memory_gb}") from None

    @classmethod
    def from_config(cls, cfg) -> RunSettings:
        keys = ("seed", "device", "dtype", "replicates", "progress", "threads", "max_memory_gb", "figures")
        return cls(**{k: cfg[k] for k in keys if k in cfg})


@dataclass(frozen=True)
class RunSpec:
    """One run, every group built and checked by its constructor (module doc)."""

    data: GaussianData | TextureData | MixtureData | DatasetData
    model: ModelSpec
    objective: Any
    sampler: Any
    train: TrainSettings
    optimizer: Callable | None
    settings: RunSettings
    config: dict
    evaluation: EvalSettings = EvalSettings()

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RunSpec:
        """Builds the run from a composed gsm config; raises ConfigError for the first bad value."""
        config = _resolved(cfg)
        settings = RunSettings.from_config(cfg)
        with as_config_error("data.kind"):
            kind = data_kind(cfg)
        with as_config_error("train"):     # from the resolved copy: resolving interpolations again costs ~ms each
            train = TrainSettings.from_config(config["train"])
        data = {"texture": _texture, "mixture": _mixture, "dataset": _dataset}.get(kind, _gaussian)(cfg)
        model = ModelSpec(_model_class(cfg), copy.deepcopy(config["model"]))
        target = _get(cfg, "sampler._target_")
        mismatch = linear_score_mismatch(_declared_class(cfg.sampler), model.cls,
                                         target if isinstance(target, str) else None, model.target)
        if mismatch:     # from the classes' declarations: before the sampler is built (diffusers: seconds)
            raise ConfigError(mismatch)
        with as_config_error("sampler"):
            sampler = instantiate(cfg.sampler)
        with as_config_error("objective"):
            objective = instantiate(cfg.objective) if _get(cfg, "objective") is not _ABSENT else DSM()
        return cls(data=data, model=model, objective=objective, sampler=sampler, train=train,
                   optimizer=None if model.linear else _optimizer(cfg), settings=settings, config=config,
                   evaluation=EvalSettings.from_config(cfg))


def _get(cfg, key):
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)


def _resolved(cfg) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{getattr(e, 'full_key', None) or 'the config'} must be resolvable, got an error: "
                          f"{_first_line(e)}") from None


def _data_n(cfg) -> int:
    n = _get(cfg, "data.n")
    return int(checked("data.n", number, None if n is _ABSENT else n, 1, integer=True))


def _texture(cfg) -> TextureData:
    """The image data.image (its own loader checks data.size, data.fit) and its ADSN spectrum."""
    from gsm.data.texture import adsn_spectrum, load_texture
    n = _data_n(cfg)
    with as_config_error("data.image"):     # any error reading it names data.image (or its own key)
        image = load_texture(cfg.data.image, cfg.data.size, cfg.data.fit)
        return TextureData(image=image, spectrum=adsn_spectrum(image, cfg.data.floor), n=n)


def _ot_particles(cfg) -> int:
    """data.ot_particles: M' ≥ 2, the particles per replicate of the exact-OT W2²."""
    from gsm.data.mixture import OT_PARTICLES
    ot_particles = _get(cfg, "data.ot_particles")
    return checked("data.ot_particles", number, OT_PARTICLES if ot_particles is _ABSENT else ot_particles,
                   2, integer=True)


def _mixture(cfg) -> MixtureData:
    """The mixture `data.mixture` builds (its constructor checks data.components, weights, separation, ...)."""
    n, ot_particles = _data_n(cfg), _ot_particles(cfg)
    with as_config_error("data.mixture"):
        mixture = instantiate(cfg.data.mixture)
    return MixtureData(mixture=mixture, n=n, ot_particles=ot_particles)


def _dataset(cfg) -> DatasetData:
    """The pool `data.pool` loads (data=digits | patches; its loader checks its keys), N ≤ its size less the
    held-out minimum (`SamplePool.check_n`)."""
    n, ot_particles = _data_n(cfg), _ot_particles(cfg)
    with as_config_error("data.pool"):
        pool = instantiate(cfg.data.pool)
    n = checked("data.n", lambda key, v: pool.check_n(v), n)
    return DatasetData(pool=pool, n=n, ot_particles=ot_particles)


def _gaussian(cfg) -> GaussianData:
    """λ from cfg.data.spectrum (its constructor checks its keys), which must give data.dim eigenvalues,
    finite and ≥ 0, not all 0 (data=file may hold zeros)."""
    from gsm.data.gaussian import check_basis
    n = _data_n(cfg)
    with as_config_error("data.basis"):
        basis = check_basis(cfg.data.basis)
    with as_config_error("data.spectrum"):
        lam = torch.as_tensor(instantiate(cfg.data.spectrum)).to(torch.float64)
    d = _spectrum_dim(cfg, lam)
    if lam.ndim != 1 or not lam.numel() or lam.numel() != (d or lam.numel()) or not torch.isfinite(lam).all() \
            or (lam < 0).any() or not (lam > 0).any():
        shown = lam.tolist() if lam.numel() <= 8 else f"{lam.numel()} values in [{lam.min()}, {lam.max()}]"
        raise ConfigError(f"data.spectrum must give {f'data.dim = {d}' if d else 'd >= 1'} eigenvalues, finite and "
                          f">= 0 (not all 0), got {shown}")
    return GaussianData(spectrum=lam, n=n, basis=basis)


def _spectrum_dim(cfg, lam):
    """The d that data.spectrum must give: data.dim, except for data=file, whose d is the file's length (a
    data.dim there, e.g. a preset's, is ignored with a warning, so +experiment=pg_table data=file works)."""
    d = _get(cfg, "data.dim")
    d = None if d is _ABSENT else d
    if _get(cfg, "data.spectrum._target_") != FILE_SPECTRUM or d is None:
        return d
    if d != lam.numel():
        warnings.warn(f"data.dim={d} ignored: data=file takes d = {lam.numel()} from data.path", stacklevel=2)
    return None


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


def _declared_class(node):
    """The class a config node's `_target_` names, or None when it names none (instantiate then reports it)."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    try:
        return get_object(target) if isinstance(target, str) else target
    except Exception:
        return None


def _optimizer(cfg):
    """The optim group's factory (`_partial_`: optimizer(parameters)), optim.lr > 0."""
    lr = _get(cfg, "optim.lr")
    if lr is not _ABSENT:
        checked("optim.lr", number, lr, 0, low_open=True)
    with as_config_error("optim"):
        return instantiate(cfg.optim)
