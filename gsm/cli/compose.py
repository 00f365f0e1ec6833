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
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

# at import, which gsm.cli.main does with SIGINT held (gsm.cli.sigint): a SIGINT inside these imports could be swallowed
from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import open_dict

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


@contextmanager
def composed_once():
    """While active, every Hydra config loader composes a multirun's jobs through a `SweepComposer`
    (module doc); Hydra's own method is restored on exit."""
    hydra_method = ConfigLoaderImpl.load_sweep_config
    composers: dict = {}

    def load_sweep_config(loader, master_config, sweep_overrides):
        if id(loader) not in composers:
            composers[id(loader)] = SweepComposer(
                loader, lambda master, overrides: hydra_method(loader, master, overrides))
        with sigint.held():     # OmegaConf is not safe to interrupt (held already, but in a joblib sweep's parent)
            return composers[id(loader)].load_sweep_config(master_config, sweep_overrides)

    ConfigLoaderImpl.load_sweep_config = load_sweep_config
    try:
        yield composers
    finally:
        ConfigLoaderImpl.load_sweep_config = hydra_method
