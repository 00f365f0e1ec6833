"""The run specification (issue 21): `run()` builds each group once from the config (the sampler: one
instance per run) and hands the typed objects to validation, the memory estimate and the backends, which
read no DictConfig; a sampler that declares `requires_linear_score` is refused with a non-linear model
before anything is built or trained."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from omegaconf import OmegaConf

from gsm.pipeline.run import backend_for, run
from gsm.pipeline.spec import RunSpec
from gsm.pipeline.validate import ConfigError, validate_config
from gsm.samplers.langevin import Langevin
from gsm.samplers.vp import VP
from gsm.scores.linear import LinearScore
from gsm.training.objectives import DSM
from gsm.training.settings import TrainSettings

BUILT: list[str] = []     # the class of every sampler built, in order


@dataclass
class CountingLangevin(Langevin):
    def __post_init__(self):
        BUILT.append(type(self).__name__)
        super().__post_init__()


@dataclass
class CountingVP(VP):
    def __post_init__(self):
        BUILT.append(type(self).__name__)
        super().__post_init__()


class PlainMatrices(LinearScore):
    """A user's linear score whose name does not end in LinearScore."""


TINY = ["replicates=3", "data.dim=3", "data.n=30", "train.steps=300", "sampler.steps=20", "sampler.particles=50",
        "progress=false", "threads=1"]
LANGEVIN = f"sampler._target_={__name__}.CountingLangevin"
TEXTURE = ["data=texture", "model=fourier_linear", "data.size=16", "data.n=8", "replicates=3", "train.steps=50",
           "sampler.steps=20", "sampler.particles=6", "progress=false", "threads=1"]

RUNS = {  # backend: overrides (each run's sampler is a counting subclass)
    "matrix": [*TINY, LANGEVIN],
    "neural": [*TINY, LANGEVIN, "model=mlp", "model.width=8", "train.steps=20"],
    "spectral": [*TINY, "sampler=vp", f"sampler._target_={__name__}.CountingVP", "model=oracle", "sampler.steps=10"],
    "texture": [*TEXTURE, LANGEVIN],
}


@pytest.mark.parametrize("backend", RUNS)
def test_a_run_builds_its_sampler_exactly_once(backend, compose_cfg, tmp_path):
    BUILT.clear()
    results = run(compose_cfg(*RUNS[backend]), tmp_path / "run")
    assert results["status"] == "ok"
    assert len(BUILT) == 1, BUILT
    assert (tmp_path / "run" / "results.json").exists()


def _configs(value, path="spec"):
    """(path, value) of every OmegaConf container reachable from value (dataclasses, dicts, lists, objects)."""
    if OmegaConf.is_config(value):
        yield path, value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _configs(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _configs(v, f"{path}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _configs(v, f"{path}[{i}]")


@pytest.mark.parametrize("backend", RUNS)
def test_the_spec_holds_typed_objects_and_the_backends_read_no_config(backend, compose_cfg):
    spec = RunSpec.from_config(compose_cfg(*RUNS[backend]))
    assert isinstance(spec.train, TrainSettings) and isinstance(spec.objective, DSM)
    assert type(spec.sampler).__name__.startswith("Counting")
    assert spec.data.kind == ("texture" if backend == "texture" else "gaussian")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.sampler = None
    found = list(_configs(spec))
    backend_obj = backend_for(spec, {}, lambda msg: None)
    assert backend_obj.sampler is spec.sampler
    found += list(_configs(vars(backend_obj), "backend"))
    assert not found, [p for p, _ in found]


SHIPPED_SAMPLERS = ["langevin", "ddpm", "ddim", "vp", "edm", "diffusers"]
NEEDS_LINEAR = {"vp", "edm", "diffusers"}       # they run their chain through model.matrices()


@pytest.mark.parametrize("sampler", SHIPPED_SAMPLERS)
def test_a_sampler_that_needs_a_linear_score_refuses_a_neural_one_naming_both(sampler, compose_cfg):
    cfg = compose_cfg(f"sampler={sampler}", "model=mlp", "data.dim=4")
    if sampler not in NEEDS_LINEAR:
        assert isinstance(validate_config(cfg), list)
        return
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert str(info.value) == f"sampler={sampler} needs a linear score (model=linear | oracle), got model=mlp (MLPScore)"


def test_the_refusal_comes_before_the_sampler_is_built(compose_cfg, tmp_path):
    BUILT.clear()
    cfg = compose_cfg(*TINY, "sampler=vp", f"sampler._target_={__name__}.CountingVP", "model=mlp")
    with pytest.raises(ConfigError, match=rf"^sampler._target_={__name__}.CountingVP needs a linear score .* "
                                          r"got model=mlp \(MLPScore\)$"):
        run(cfg, tmp_path / "run")
    assert BUILT == [] and not (tmp_path / "run").exists()


def test_a_user_model_is_judged_by_what_it_declares(compose_cfg):
    """A user's LinearScore subclass (any name) is linear; a plain torch module is a neural score."""
    assert isinstance(validate_config(compose_cfg("sampler=edm", f"model._target_={__name__}.PlainMatrices",
                                                  "data.dim=4")), list)
    cfg = compose_cfg("sampler=edm", "model=custom", "model._target_=torch.nn.Linear", "+model.in_features=4",
                      "+model.out_features=4", "data.dim=4")
    with pytest.raises(ConfigError, match=r"^sampler=edm needs a linear score \(model=linear \| oracle\), "
                                          r"got model._target_=torch.nn.Linear \(Linear\)$"):
        validate_config(cfg)
