"""What kind of run a config describes, from what its groups declare (never from which keys exist):
the data's `data.kind`, the model class's `linear` and `requires_training`, and the sampler's
`spectral_path`. Read by the run specification (`gsm.pipeline.spec`), the backend choice, the memory
estimate and the thread choice."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

from hydra.utils import get_object
from omegaconf import OmegaConf

from gsm.scores.base import ScoreModel

DATA_KINDS = ("gaussian", "texture", "mixture", "dataset")


def data_kind(cfg) -> str:
    """data.kind: gaussian (a d-dimensional N(0, Σ), full matrices), texture (stationary, Fourier-diagonal) or
    mixture (a Gaussian mixture, `gsm.data.mixture`: not Gaussian, true OT distances) or dataset (a finite pool of
    real samples, `gsm.data.pool`: data=digits | patches, true OT distances to held-out samples, no exact score)."""
    kind = OmegaConf.select(cfg, "data.kind", default="gaussian")
    if kind not in DATA_KINDS:
        raise ValueError(f"data.kind must be one of {' | '.join(DATA_KINDS)}, got {kind}")
    return kind


def _is_score_model(cls) -> bool:
    return isinstance(cls, type) and issubclass(cls, ScoreModel)


def model_declares(cls) -> tuple[bool, bool]:
    """(linear, requires_training) as the model class declares them (`gsm.scores.base.ScoreModel`); a user
    class that does not subclass ScoreModel is a neural score that requires training."""
    if _is_score_model(cls):
        return bool(cls.linear), bool(cls.requires_training)
    return False, True


def model_is_exact(cls) -> bool:
    """The class declares the exact score of the data (`ScoreModel.exact`: model=oracle)."""
    return _is_score_model(cls) and bool(cls.exact)


def model_data_kind(cls) -> str:
    """The data.kind the model class is built for (`ScoreModel.data_kind`; a user class: gaussian)."""
    return cls.data_kind if _is_score_model(cls) else "gaussian"


def score_is_spectral(spec) -> bool:
    """The score is a function of Σ (an oracle) or of Σ̂ (train.solver=exact): it shares Σ̂'s eigenbasis,
    and the objective is one the per-eigenvalue closed forms are written for (`closed_forms`)."""
    model = spec.model
    return (model.linear and (not model.requires_training or spec.train.solver == "exact")
            and getattr(spec.objective, "closed_forms", False))


def objective_predicts(objective) -> str:
    """What the objective learns (`predicts`: score | velocity; absent: a score, DSM's)."""
    return getattr(objective, "predicts", "score")


def backend_name(spec) -> str:
    """texture | mixture_linear | mixture_neural | dataset_linear | dataset_neural | spectral | matrix | neural
    (`gsm.pipeline.run.BACKENDS`) of a `gsm.pipeline.spec.RunSpec`. On data=mixture the oracle is the mixture's
    exact score, a non-linear one."""
    if spec.data.kind == "texture":
        return "texture"
    if spec.data.kind == "dataset":     # real data: no exact score (validation refuses model=oracle)
        return "dataset_linear" if spec.model.linear else "dataset_neural"
    if spec.data.kind == "mixture":     # never per eigenvalue: the data are not N(0, Σ)
        return "mixture_linear" if spec.model.linear and not spec.model.exact else "mixture_neural"
    if spec.sampler.spectral_path(score_is_spectral(spec)):
        return "spectral"
    return "matrix" if spec.model.linear else "neural"


def linear_score_mismatch(sampler_cls, model_cls, sampler_target: str | None = None,
                          model_target: str | None = None) -> str | None:
    """The one-line refusal when the sampler class declares `requires_linear_score` and the model class
    does not declare `linear`, naming both as the user chose them (the `_target_` strings, when given);
    None when they fit."""
    if not getattr(sampler_cls, "requires_linear_score", False) or model_declares(model_cls)[0]:
        return None
    linear = " | ".join(linear_model_options()) or "linear | oracle"
    return (f"{chosen('sampler', sampler_cls, sampler_target)} needs a linear score (model={linear}), "
            f"got {chosen('model', model_cls, model_target)} ({getattr(model_cls, '__name__', model_cls)})")


def class_path(cls) -> str:
    """The `_target_` string that names a class."""
    return f"{cls.__module__}.{cls.__qualname__}" if isinstance(cls, type) else str(cls)


@lru_cache(maxsize=None)
def group_targets(group: str) -> dict[str, str]:
    """{option: its `_target_`} of the shipped options of a config group (conf/<group>/*.yaml)."""
    out = {}
    for f in sorted(resources.files("gsm.conf").joinpath(group).iterdir(), key=lambda f: f.name):
        if f.name.endswith(".yaml"):
            node = OmegaConf.create(f.read_text())
            if not OmegaConf.is_missing(node, "_target_") and isinstance(node.get("_target_"), str):
                out[f.name[:-5]] = node._target_
    return out


def chosen(group: str, cls, target: str | None = None) -> str:
    """How the user names the class: `<group>=<option>` for a shipped option, else `<group>._target_=<path>`
    (`target`, the string the config gave, or the class's own path)."""
    paths = {class_path(cls), target}
    option = next((o for o, t in group_targets(group).items() if t in paths), None)
    return f"{group}={option}" if option else f"{group}._target_={target or class_path(cls)}"


def linear_model_options() -> list[str]:
    """The shipped model options whose class declares a linear score of a d-dimensional target."""
    out = []
    for option, target in group_targets("model").items():
        try:
            cls = get_object(target)
        except Exception:
            continue
        if model_declares(cls)[0] and model_data_kind(cls) == "gaussian":
            out.append(option)
    return out
