"""What kind of run a config describes, from what its groups declare (never from which keys exist):
the data's `data.kind`, the model class's `linear` and `requires_training`, and the sampler's
`spectral_path`. Read by the pipeline (`backend_for`), the memory estimate and the thread choice."""
from __future__ import annotations

from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from gsm.scores.base import ScoreModel

DATA_KINDS = ("gaussian", "texture")


def data_kind(cfg) -> str:
    """data.kind: gaussian (a d-dimensional N(0, Σ), full matrices) or texture (stationary, Fourier-diagonal)."""
    kind = OmegaConf.select(cfg, "data.kind", default="gaussian")
    if kind not in DATA_KINDS:
        raise ValueError(f"data.kind must be one of {' | '.join(DATA_KINDS)}, got {kind}")
    return kind


def data_dim(cfg) -> int:
    """d of a gaussian target: data.dim, or the length of the spectrum (data=file)."""
    if OmegaConf.select(cfg, "data.dim") is not None:
        return int(cfg.data.dim)
    return len(instantiate(cfg.data.spectrum))


def model_declares(cfg) -> tuple[bool, bool]:
    """(linear, requires_training) as the model class declares them (`gsm.scores.base.ScoreModel`); a user
    class that does not subclass ScoreModel is a neural score that requires training."""
    cls = get_object(cfg.model._target_)
    if isinstance(cls, type) and issubclass(cls, ScoreModel):
        return bool(cls.linear), bool(cls.requires_training)
    return False, True


def model_data_kind(cfg) -> str:
    """The data.kind the model class is built for (`ScoreModel.data_kind`; a user class: gaussian)."""
    cls = get_object(cfg.model._target_)
    return cls.data_kind if isinstance(cls, type) and issubclass(cls, ScoreModel) else "gaussian"


def score_is_spectral(cfg) -> bool:
    """The score is a function of Σ (an oracle) or of Σ̂ (train.solver=exact): it shares Σ̂'s eigenbasis."""
    linear, trained = model_declares(cfg)
    return linear and (not trained or cfg.train.solver == "exact")


def backend_name(cfg, sampler) -> str:
    """texture | spectral | matrix | neural (`gsm.pipeline.run.BACKENDS`)."""
    if data_kind(cfg) == "texture":
        return "texture"
    if sampler.spectral_path(score_is_spectral(cfg)):
        return "spectral"
    return "matrix" if model_declares(cfg)[0] else "neural"
