"""Every option of every config group composes and instantiates (lightning-hydra-template's test_configs).

The options are the yaml files of conf/<group>/ (enumerated, not listed here). Each is composed as the
`gsm` command composes it (`group=option`, or `+group=option` for a group that is not in config.yaml's
defaults list) at a small size (data.dim = 4, replicates = 2), and every node with a `_target_` is
instantiated as the pipeline's backends do at run time (gsm.pipeline.matrix, gsm.pipeline.texture):

    spectrum = instantiate(cfg.data.spectrum)                      # data=texture: load_texture + adsn_spectrum
                                                                   # data=mixture: instantiate(cfg.data.mixture)
                                                                   # data=digits | patches: instantiate(cfg.data.pool)
    sampler = instantiate(cfg.sampler); sampler.bind(Σ)            # bind: samplers that have it (sampler=vp)
    alphas, stds = sampler.noise_levels(cfg.train.sigma)
    model = build_score_model(cfg.model, dim=d, replicates=R, alphas=alphas, stds=stds, seed=cfg.seed)
                        # data=texture: instantiate(cfg.model, size=n, replicates=R, levels=L, noise_stds=stds)
    optimizer = instantiate(cfg.optim)(model.parameters())         # _partial_

and checked against the interface the pipeline relies on. Experiment presets are sweeps: each is composed
as its jobs are, once per value of each categorical swept parameter (model, scheme, scheduler, score) and
per extreme of each numeric one, the other swept parameters at their first value.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

CONF = Path(__file__).resolve().parents[2] / "conf"
DIM, REPLICATES = 4, 2
SAMPLER_METHODS = ("noise_levels", "covariance", "sample", "law", "check_prediction")
# diffusers' schedulers under numpy 2 (np.array(tensor, copy=False)): not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def groups() -> dict[str, list[str]]:
    """{group: [option, ...]} from the yaml files of conf/'s sub-directories."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in sorted(CONF.iterdir())
            if d.is_dir() and any(d.glob("*.yaml"))}


def default_groups() -> set[str]:
    """The groups config.yaml's defaults list names (selected as group=option; the others need +group)."""
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml"))["defaults"]
    return {k.split("@")[0].lstrip("+/").split("/")[0] for d in defaults if isinstance(d, dict) for k in d}


def selection(group: str, option: str) -> str:
    return f"{group}={option}" if group in default_groups() else f"+{group}={option}"


def is_texture(data_cfg) -> bool:
    """The Fourier-diagonal backend's data (data.kind=texture; before data.kind: an image)."""
    return data_cfg.get("kind") == "texture" or ("kind" not in data_cfg and "image" in data_cfg)


def texture_options() -> list[str]:
    out = [o for o in groups()["data"] if is_texture(OmegaConf.load(CONF / "data" / f"{o}.yaml"))]
    assert out, "no data option for the texture backend"
    return out


def is_fourier(model_cfg) -> bool:
    return not OmegaConf.is_missing(model_cfg, "_target_") and \
        str(model_cfg.get("_target_", "")).startswith("gsm.scores.fourier.")


def fourier_options() -> list[str]:
    """The model options with a Fourier-diagonal score (data=texture's models)."""
    out = [o for o in groups()["model"] if is_fourier(OmegaConf.load(CONF / "model" / f"{o}.yaml"))]
    assert out, "no model option with a gsm.scores.fourier target"
    return out


CASES = [(g, o) for g, options in groups().items() if g != "experiment" for o in options]


def values_kept(values: list[str]) -> list[str]:
    """The values of a swept parameter to test: all of a categorical one (model, scheme, scheduler, ...),
    the first and the extremes of a numeric one (where a sampler or a size is the most demanding)."""
    try:
        nums = [float(v) for v in values]
    except ValueError:
        return values
    keep = {values[0], values[nums.index(min(nums))], values[nums.index(max(nums))]}
    return [v for v in values if v in keep]


def swept_jobs(experiment: str) -> list[list[str]]:
    """The overrides of the preset's jobs to test: each tested value of each swept parameter once (see
    values_kept), the other swept parameters at their first value."""
    with initialize_config_module(version_base="1.3", config_module="gsm.conf"):
        cfg = compose(config_name="config", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params or {})
    values = {}
    for key, value in params.items():
        override = OverridesParser.create().parse_overrides([f"{key}={value}"])[0]
        values[key] = values_kept([str(v) for v in override.sweep_iterator()]) \
            if override.is_sweep_override() else [str(value)]
    first = {k: v[0] for k, v in values.items()}
    jobs = [[f"{k}={v}" for k, v in first.items()]]
    for key, vals in values.items():
        jobs += [[f"{k}={val if k == key else v}" for k, v in first.items()] for val in vals[1:]]
    return jobs


def small(cfg, tmp_path):
    """The composed config at test size, with what a run needs from the command line (data.path)."""
    with open_dict(cfg):
        if "dim" in cfg.data and "eigenvalues" not in cfg.data.get("spectrum", {}):
            cfg.data.dim = DIM
        if "size" in cfg.data:            # data=texture: an n×n image, d = n²
            cfg.data.size = 8
        if "path" in cfg.data and cfg.data.path is None:     # data=file: the eigenvalues of Σ from a file
            import numpy as np
            path = tmp_path / "eigenvalues.npy"
            np.save(path, 1.0 / torch.arange(1, DIM + 1, dtype=torch.float64).numpy())
            cfg.data.path = str(path)
        cfg.replicates = REPLICATES
        if "particles" in cfg.sampler:
            cfg.sampler.particles = 10
    return cfg


def need(cfg):
    """Skips when the config needs an optional extra that is not installed."""
    if str(cfg.sampler.get("_target_", "")).startswith("gsm.samplers.diffusers_scheduler"):
        pytest.importorskip("diffusers", reason="sampler=diffusers needs pip install 'gsm[diffusers]'")
    if is_texture(cfg.data) or str(cfg.data.get("pool", {}).get("_target_", "")).endswith("load_patches"):
        pytest.importorskip("skimage", reason="data=texture | patches needs pip install 'gsm[texture]'")
    if str(cfg.data.get("pool", {}).get("_target_", "")).endswith("load_digits"):
        pytest.importorskip("sklearn", reason="data=digits needs pip install 'gsm[digits]'")


def build(cfg) -> dict:
    """Instantiates the config's _target_ nodes as the pipeline does (see the module docstring)."""
    from gsm.data.gaussian import make_gaussian
    from gsm.scores.nets import build_score_model

    need(cfg)
    R, out = int(cfg.replicates), {}
    texture = is_texture(cfg.data)
    if texture:
        from gsm.data.texture import adsn_spectrum, load_texture
        lam = adsn_spectrum(load_texture(cfg.data.image, cfg.data.size, cfg.data.fit), cfg.data.floor)
        out["spectrum"], out["texture_shape"] = lam.reshape(-1), tuple(lam.shape)
    elif cfg.data.get("kind") == "mixture":     # data=mixture: its Gaussian surrogate N(0, Σ)
        mixture = instantiate(cfg.data.mixture)
        out["spectrum"], out["covariance"] = mixture.surrogate().eigenvalues, mixture.covariance
    elif cfg.data.get("kind") == "dataset":     # data=digits | patches: the pool's Gaussian surrogate N(0, Σ)
        pool = instantiate(cfg.data.pool)
        out["spectrum"], out["covariance"] = pool.surrogate().eigenvalues, pool.covariance
    else:
        out["spectrum"] = instantiate(cfg.data.spectrum)
        out["covariance"] = make_gaussian(out["spectrum"], cfg.data.basis, cfg.seed).covariance.to(torch.float64)
    sampler = out["sampler"] = instantiate(cfg.sampler)
    if hasattr(sampler, "bind") and not texture:
        sampler.bind(out["covariance"])
    alphas, stds = out["levels"] = sampler.noise_levels(cfg.train.sigma)
    if texture:         # gsm.pipeline.texture
        out["model"] = instantiate(cfg.model, size=int(cfg.data.size), replicates=R, levels=alphas.numel(),
                                   noise_stds=stds)
    else:
        out["model"] = build_score_model(cfg.model, dim=out["spectrum"].numel(), replicates=R, alphas=alphas,
                                         stds=stds, seed=int(cfg.seed))
    params = list(out["model"].parameters()) or [torch.nn.Parameter(torch.zeros(DIM))]   # OracleScore: none
    out["optimizer"] = instantiate(cfg.optim)(params)
    return out


def check(objs: dict, cfg) -> None:
    """The interface the pipeline relies on."""
    lam = objs["spectrum"]
    assert isinstance(lam, torch.Tensor) and lam.ndim == 1 and lam.numel() >= 1, lam
    assert torch.isfinite(lam).all() and (lam > 0).all(), f"eigenvalues must be > 0: {lam}"
    if "texture_shape" in objs:
        n = int(cfg.data.size)
        assert objs["texture_shape"] == (n, n // 2 + 1)
    elif "dim" in cfg.data:
        assert lam.numel() == cfg.data.dim

    sampler = objs["sampler"]
    missing = [m for m in SAMPLER_METHODS if not callable(getattr(sampler, m, None))]
    assert not missing, f"{type(sampler).__name__} lacks {missing}"
    alphas, stds = objs["levels"]
    for v in (alphas, stds):
        assert isinstance(v, torch.Tensor) and v.dtype == torch.float64 and v.ndim == 1, v
    assert alphas.numel() == stds.numel() >= 1
    # α = 0 is the pure-noise level (sampler=flow reads its velocity at t = 0); no level is empty (α = s = 0)
    assert torch.isfinite(alphas).all() and (alphas >= 0).all() and torch.isfinite(stds).all() and (stds >= 0).all()
    assert ((alphas > 0) | (stds > 0)).all()

    model, R, L = objs["model"], int(cfg.replicates), alphas.numel()
    assert isinstance(model, torch.nn.Module), type(model)
    if "texture_shape" in objs:
        assert tuple(model.coefficients().shape) == (R, L, *objs["texture_shape"])
    elif hasattr(model, "matrices"):
        d = lam.numel()
        assert tuple(model.matrices().shape) == (R, L, d, d)
    if "covariance" in objs:      # the sampler's exact law under the DSM optimum at its levels (the reference)
        from gsm.scores.linear import dsm_optimum
        d = lam.numel()
        A = dsm_optimum(objs["covariance"], alphas, stds)
        assert A.shape == (L, d, d)
        C = sampler.covariance(A.unsqueeze(0))[0]
        assert C.shape == (d, d) and torch.isfinite(C).all()
        assert torch.allclose(C, C.T, atol=1e-8 * float(C.abs().max()))

    opt = objs["optimizer"]
    assert isinstance(opt, torch.optim.Optimizer), type(opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(float(cfg.optim.lr))


def test_groups_are_enumerated():
    found = groups()
    assert {"data", "model", "optim", "sampler", "train", "score", "experiment"} <= set(found)
    assert all(found.values())
    assert {"data", "model", "optim", "sampler", "train"} <= default_groups()
    assert not {"score", "experiment"} & default_groups()


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_instantiates(group, option, compose_cfg, tmp_path, one_thread):
    overrides = [selection(group, option)]
    cfg = compose_cfg(*overrides)
    # score and method are global presets (@package _global_): they set other groups, no node of their own
    assert cfg.get(group) is not None or group in ("score", "method"), f"{group}={option} composed no {group} node"
    if group == "model" and OmegaConf.is_missing(cfg.model, "_target_"):
        # model=custom: the user names the class (model._target_=my_pkg.MyScore); torch.nn.Linear stands
        # in for a single-instance user model (built R times, in gsm.scores.nets.Replicated)
        with pytest.raises(MissingMandatoryValue):
            build(small(cfg, tmp_path))
        cfg = compose_cfg(*overrides, "model._target_=torch.nn.Linear", f"+model.in_features={DIM}",
                          f"+model.out_features={DIM}")
    # a Fourier score goes with data=texture and only with it (gsm.pipeline.validate)
    if is_fourier(cfg.model) and not is_texture(cfg.data):
        cfg = compose_cfg(*overrides, f"data={texture_options()[0]}")
    elif is_texture(cfg.data) and not is_fourier(cfg.model):
        cfg = compose_cfg(*overrides, f"model={fourier_options()[0]}")
    check(build(small(cfg, tmp_path)), cfg)


EXPERIMENTS = groups()["experiment"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_instantiates(experiment, compose_cfg, tmp_path, one_thread):
    jobs = swept_jobs(experiment)
    assert jobs, experiment
    for overrides in jobs:
        cfg = compose_cfg(f"+experiment={experiment}", *overrides)
        check(build(small(cfg, tmp_path)), cfg)


REPORT_STUDIES = ("schedulers", "flow_vs_diffusion", "where_theory_stops", "where_theory_stops_flow", "memorization")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_report_studies_draw_no_per_job_figures(experiment):
    """A preset whose result is gsm-report's study report reads results.json only: its jobs draw no figures (they
    were 97 of flow_vs_diffusion's 136 s, docs/flow.md); the other presets keep them for TensorBoard's sweep view.
    Composed as `gsm` does (compose_cfg would add figures=false)."""
    with initialize_config_module(version_base="1.3", config_module="gsm.conf"):
        cfg = compose(config_name="config", overrides=[f"+experiment={experiment}"])
    assert cfg.figures is (experiment not in REPORT_STUDIES), experiment
