"""A multirun's job configs composed once per set of config groups, not twice per job.

Hydra 1.3 composes every job of a sweep twice: once when the sweeper checks the batch
(`validate_batch_is_legal`), once when the launcher starts the job (`load_sweep_config`). Each
composition re-reads and re-merges every config file of the defaults list: 0.2 s idle on the 2-core
machine, so 0.4 s of each `+experiment=pg_table` cell whose sampler law takes 0.1–0.3 s
(docs/performance.md, "Sweeps"). Hydra offers no hook for its config loader, so `gsm.cli.main.main`
wraps `ConfigLoaderImpl.load_sweep_config` for the length of the app (`composed_once`) with
`SweepComposer`, which returns the same configs with less work:

* a job's overrides split into those that choose config groups (`data=file`, `+score=oracle`: they shape
  the defaults list) and value overrides (`sampler.nfe=50`). Hydra applies the value overrides after
  composing the defaults list (`ConfigLoaderImpl._apply_overrides_to_config`), so the jobs that choose
  the same groups share one composition (the *base*), and a job's config is a copy of it with its value
  overrides applied the same way, and its `hydra.overrides.task` and `hydra.job.override_dirname` set
  as Hydra sets them;
* the config built when the sweeper checks a job is handed to the launcher when it asks for the same
  job (not composed again).

Anything this does not model (a sweep override of a `hydra.*` key or group, `hydra.searchpath`, a
deletion, or an error) is composed by Hydra itself. tests/unit/test_compose.py checks that every job
of the presets gets the config Hydra composes.

A single run is composed twice too: `Hydra.get_mode` composes the config (in MULTIRUN mode, without the
sweep check) only to read `hydra.mode`, and when it is unset, Hydra composes again with `hydra.mode=RUN`
appended (≈ 0.15 s idle, 7 % of the bare imports). `RunComposer` hands the run the first composition with
that override applied as Hydra applies it, where nothing else differs: no sweep override (the RUN-mode
check would refuse it) and no missing config group (MULTIRUN mode skips them).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

# at import, which gsm.cli.main does with SIGINT held (gsm.cli.sigint): a SIGINT inside these imports could be swallowed
from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from gsm.cli import sigint


class SweepComposer:
    """`load_sweep_config(master, overrides)` of one config loader with the composition shared between
    jobs that choose the same config groups (module doc). `hydra_compose(master, overrides)` is Hydra's
    own; `counts` says how many configs each path produced ({"hydra", "base", "reused"})."""

    def __init__(self, loader, hydra_compose):
        self.loader, self.hydra_compose = loader, hydra_compose
        # keyed by id(master): each value holds the master too, so that its id is not reused while the entry lives
        self.bases: dict = {}      # (master, group overrides) → (master, the composed base config)
        self.checked: dict = {}    # (master, job overrides) → (master, the config built for the sweeper's check)
        self.counts = {"hydra": 0, "base": 0, "reused": 0}
        self.parsed: dict = {}     # override as typed → Hydra's parsed Override (parsing is ~5 ms each)

    def load_sweep_config(self, master, overrides):
        key = (id(master), tuple(overrides))
        if key in self.checked:         # the launcher asks for the job the sweeper checked: the same config
            self.counts["reused"] += 1
            return self.checked.pop(key)[1]
        cfg = self._compose(master, list(overrides))
        self.checked[key] = (master, cfg)        # the sweeper's check only reads it; the launcher then sets hydra.job.id
        return cfg

    def _compose(self, master, overrides):
        split = self._split(overrides)
        if split is None:
            self.counts["hydra"] += 1
            return self.hydra_compose(master, overrides)
        groups, values, parsed = split
        bkey = (id(master), tuple(groups))
        if bkey not in self.bases:
            self.bases[bkey] = (master, self.hydra_compose(master, groups))
        self.counts["base"] += 1
        return _with_values(self.bases[bkey][1], values, parsed)

    def _split(self, overrides):
        """(group overrides as typed, parsed value overrides, all parsed) or None where Hydra must compose."""
        try:
            for line in overrides:
                if line not in self.parsed:
                    self.parsed[line] = OverridesParser.create().parse_override(line)
        except Exception:     # Hydra reports it in its own words
            return None
        parsed = [self.parsed[line] for line in overrides]
        groups, values = [], []
        for o in parsed:
            if (o.is_hydra_override() or o.is_delete() or o.is_force_add() or o.is_sweep_override()
                    or o.get_key_element() == "hydra.searchpath"):
                return None
            is_group = self.loader.repository.group_exists(o.key_or_group) and not isinstance(o.value(), dict)
            if is_group:
                groups.append(o.input_line)
            else:
                values.append(o)
        return groups, values, parsed


def _with_values(base, values, parsed):
    """A copy of `base` with the value overrides applied as Hydra applies them after composition, and the
    job's hydra.overrides.task (every override, in order) and hydra.job.override_dirname."""
    cfg = copy.deepcopy(base)
    ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    job = cfg.hydra.job
    with open_dict(cfg.hydra):
        cfg.hydra.overrides.task = [o.input_line for o in parsed]
        job.override_dirname = get_overrides_dirname(
            overrides=parsed, kv_sep=job.config.override_dirname.kv_sep,
            item_sep=job.config.override_dirname.item_sep, exclude_keys=job.config.override_dirname.exclude_keys)
    return cfg


RUN_MODE_OVERRIDE = "hydra.mode=RUN"      # what Hydra appends to a run's overrides when the config sets no mode


class RunComposer:
    """`load_configuration(config_name, overrides, run_mode, ...)` of one config loader, where a run's second
    composition is the first one's config with `hydra.mode=RUN` applied (module doc). `hydra_load(...)` is
    Hydra's own; `counts` says how many configs each path produced ({"hydra", "reused"})."""

    def __init__(self, hydra_load):
        self.hydra_load = hydra_load
        self.mode_probe = None      # (config name, overrides, config) of the last MULTIRUN composition
        self.counts = {"hydra": 0, "reused": 0}

    def load_configuration(self, config_name, overrides, run_mode, from_shell=True, validate_sweep_overrides=True):
        probe, self.mode_probe = self.mode_probe, None
        if (run_mode == RunMode.RUN and probe is not None and probe[0] == config_name
                and list(overrides) == [*probe[1], RUN_MODE_OVERRIDE] and reusable(probe[2], probe[1])):
            self.counts["reused"] += 1
            return with_run_mode(probe[2])
        self.counts["hydra"] += 1
        cfg = self.hydra_load(config_name, overrides, run_mode, from_shell, validate_sweep_overrides)
        if run_mode == RunMode.MULTIRUN and not validate_sweep_overrides:     # get_mode's probe
            self.mode_probe = (config_name, list(overrides), cfg)
        return cfg


def reusable(cfg, overrides) -> bool:
    """Whether Hydra's RUN composition of `overrides` is `cfg` (composed in MULTIRUN mode) plus hydra.mode=RUN:
    the config sets no mode, no override sweeps, and no config group was left missing."""
    if OmegaConf.select(cfg, "hydra.mode") is not None:
        return False
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:     # Hydra reports it in its own words
        return False
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    return not any(o.is_sweep_override() for o in parsed) and "???" not in choices.values()


def with_run_mode(cfg):
    """A copy of `cfg` with hydra.mode=RUN applied as Hydra applies a hydra override after composition."""
    cfg = copy.deepcopy(cfg)
    ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides([RUN_MODE_OVERRIDE]), cfg)
    cfg.hydra.overrides.hydra.append(RUN_MODE_OVERRIDE)
    return cfg


@contextmanager
def composed_once():
    """While active, every Hydra config loader composes a multirun's jobs through a `SweepComposer`, and a
    single run once through a `RunComposer` (module doc); Hydra's own methods are restored on exit."""
    hydra_method, hydra_load = ConfigLoaderImpl.load_sweep_config, ConfigLoaderImpl.load_configuration
    composers: dict = {}
    runs: dict = {}

    def load_configuration(loader, config_name, overrides, run_mode, from_shell=True, validate_sweep_overrides=True):
        if id(loader) not in runs:
            runs[id(loader)] = RunComposer(lambda *a: hydra_load(loader, *a))
        with sigint.held():
            return runs[id(loader)].load_configuration(config_name, overrides, run_mode, from_shell,
                                                        validate_sweep_overrides)

    def load_sweep_config(loader, master_config, sweep_overrides):
        if id(loader) not in composers:
            composers[id(loader)] = SweepComposer(
                loader, lambda master, overrides: hydra_method(loader, master, overrides))
        with sigint.held():     # OmegaConf is not safe to interrupt (held already, but in a joblib sweep's parent)
            return composers[id(loader)].load_sweep_config(master_config, sweep_overrides)

    ConfigLoaderImpl.load_sweep_config = load_sweep_config
    ConfigLoaderImpl.load_configuration = load_configuration
    try:
        yield composers
    finally:
        ConfigLoaderImpl.load_sweep_config, ConfigLoaderImpl.load_configuration = hydra_method, hydra_load
