"""gsm.cli.compose: a sweep's job configs, composed once per set of config groups, are the configs Hydra
composes itself (`ConfigLoaderImpl.load_sweep_config`), key for key, the hydra node included; the
launcher gets back the config the sweeper checked; what the composer does not model goes to Hydra.

The jobs are those of two presets, expanded as Hydra's basic sweeper expands them: `pg_table` on a
data=file spectrum (value overrides only: one base) and `schedulers` (`+score=oracle,plugin,sgd`: a
group override per job, three bases). Each is compared on a sample of its jobs (every k-th and the last:
a Hydra composition takes ~0.2 s).
"""
from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from gsm.cli.compose import SweepComposer, composed_once


@pytest.fixture(scope="module")
def hydra_loader():
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.utils import setup_globals

    from hydra.core.global_hydra import GlobalHydra

    setup_globals()     # the ${now:} resolver of the sweep dir, as the launcher has it
    yield Hydra.create_main_hydra2(task_name="gsm", config_search_path=create_automatic_config_search_path(
        None, None, "pkg://gsm.conf")).config_loader
    GlobalHydra.instance().clear()      # as `hydra.main` leaves it: the next test initialises its own


def sweep_jobs(loader, argv):
    """(the multirun's master config, every job's overrides) as Hydra's basic sweeper builds them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    master = loader.load_configuration("config", argv, RunMode.MULTIRUN)
    params = OmegaConf.to_container(master.hydra.sweeper.params) if master.hydra.sweeper.params else {}
    args = [f"{k}={v}" for k, v in params.items()] + OmegaConf.to_container(master.hydra.overrides.task)
    sweeper = BasicSweeper(max_batch_size=None)
    batches = sweeper.split_arguments(OverridesParser.create(config_loader=loader).parse_overrides(args), None)
    return master, [list(job) for batch in batches for job in batch]


def hydra_compose(loader):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    return lambda master, overrides: ConfigLoaderImpl.load_sweep_config(loader, master, overrides)


@pytest.mark.parametrize("preset, jobs, bases, every", [("pg_table", 192, 1, 61), ("schedulers", 63, 3, 20)])
def test_jobs_get_the_config_hydra_composes(hydra_loader, tmp_path, preset, jobs, bases, every):
    argv = [f"+experiment={preset}"]
    if preset == "pg_table":
        np.save(tmp_path / "lam.npy", np.arange(1, 65, dtype=np.float64) ** -1.5)
        argv += ["data=file", f"data.path={tmp_path / 'lam.npy'}"]
    master, overrides = sweep_jobs(hydra_loader, argv)
    assert len(overrides) == jobs
    composer = SweepComposer(hydra_loader, hydra_compose(hydra_loader))
    fast = [composer.load_sweep_config(master, job) for job in overrides]
    assert composer.counts == {"hydra": 0, "base": jobs, "reused": 0} and len(composer.bases) == bases
    for i in sorted({*range(0, jobs, every), jobs - 1}):
        reference = hydra_compose(hydra_loader)(master, overrides[i])
        assert OmegaConf.to_container(fast[i]) == OmegaConf.to_container(reference), overrides[i]
        assert fast[i].hydra.sweep.dir == reference.hydra.sweep.dir     # ${now:} from the master's cache
    for i, job in enumerate(overrides):      # the launcher asks again: the config the sweeper checked
        assert composer.load_sweep_config(master, job) is fast[i]
    assert composer.counts["reused"] == jobs


def test_a_changed_group_does_not_reuse_a_base(hydra_loader, tmp_path):
    """data=file vs data=powerlaw in one sweep: two bases, each job its own data config."""
    np.save(tmp_path / "lam.npy", np.ones(5))
    master, _ = sweep_jobs(hydra_loader, ["seed=0"])
    composer = SweepComposer(hydra_loader, hydra_compose(hydra_loader))
    a = composer.load_sweep_config(master, ["data=file", f"data.path={tmp_path / 'lam.npy'}", "seed=1"])
    b = composer.load_sweep_config(master, ["data=powerlaw", "data.dim=3", "seed=2"])
    c = composer.load_sweep_config(master, ["data=file", f"data.path={tmp_path / 'lam.npy'}", "seed=3"])
    assert len(composer.bases) == 2
    assert (a.data.spectrum._target_, b.data.spectrum._target_) == ("gsm.data.gaussian.file_spectrum",
                                                                    "gsm.data.gaussian.powerlaw_spectrum")
    assert (a.seed, b.seed, c.seed, b.data.dim) == (1, 2, 3, 3) and "path" not in b.data
    assert a.hydra.overrides.task[-1] == "seed=1" and c.hydra.job.override_dirname.endswith("seed=3")


@pytest.mark.parametrize("override", ["hydra.job.name=x", "~data.basis", "hydra/launcher=basic"])
def test_what_the_composer_does_not_model_goes_to_hydra(hydra_loader, override):
    master, _ = sweep_jobs(hydra_loader, ["seed=0"])
    composer = SweepComposer(hydra_loader, hydra_compose(hydra_loader))
    cfg = composer.load_sweep_config(master, ["seed=4", override])
    assert composer.counts == {"hydra": 1, "base": 0, "reused": 0} and cfg.seed == 4


def test_composed_once_restores_hydras_method():
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    before = ConfigLoaderImpl.load_sweep_config, ConfigLoaderImpl.load_configuration
    with composed_once():
        assert ConfigLoaderImpl.load_sweep_config is not before[0]
        assert ConfigLoaderImpl.load_configuration is not before[1]
    assert (ConfigLoaderImpl.load_sweep_config, ConfigLoaderImpl.load_configuration) == before


def hydra_load(loader):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    return lambda *args: ConfigLoaderImpl.load_configuration(loader, *args)


def compose_run_twice(composer, argv):
    """A single run's two compositions as `hydra.main` makes them: get_mode's probe, then the run's."""
    from hydra.types import RunMode

    composer.load_configuration("config", list(argv), RunMode.MULTIRUN, True, False)
    return composer.load_configuration("config", [*argv, "hydra.mode=RUN"], RunMode.RUN)


@pytest.mark.parametrize("argv", [[], ["sampler=ddpm", "train.tau=0.1", "data.n=40"], ["data=mixture", "model=mlp"],
                                  ["+score=oracle", "sampler=flow", "objective=cfm"], ["hydra.job.name=x", "seed=3"]])
def test_a_run_gets_the_config_hydra_composes_for_it(hydra_loader, argv):
    """The run's config is the probe's with hydra.mode=RUN applied: equal to Hydra's own RUN composition, key for
    key, the hydra node included (its overrides lists and mode)."""
    from gsm.cli.compose import RunComposer
    from hydra.types import RunMode

    composer = RunComposer(hydra_load(hydra_loader))
    cfg = compose_run_twice(composer, argv)
    want = hydra_loader.load_configuration("config", [*argv, "hydra.mode=RUN"], RunMode.RUN)
    assert composer.counts == {"hydra": 1, "reused": 1}
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(want)
    assert cfg.hydra.mode == RunMode.RUN and cfg.hydra.overrides.hydra[-1] == "hydra.mode=RUN"


@pytest.mark.parametrize("argv", [["seed=1,2"], ["+experiment=vs_n"]])
def test_what_a_run_cannot_reuse_goes_to_hydra(hydra_loader, argv):
    """A sweep override without -m (Hydra's RUN-mode check refuses it) and a preset that sets hydra.mode are
    composed by Hydra itself."""
    from hydra.errors import ConfigCompositionException

    from gsm.cli.compose import RunComposer

    composer = RunComposer(hydra_load(hydra_loader))
    try:
        compose_run_twice(composer, argv)
    except ConfigCompositionException:
        pass
    assert composer.counts == {"hydra": 2, "reused": 0}
