"""A config-group typo on the command line (`gsm sampler=dpm`) as one line with the closest options.

Hydra reports a missing group option (MissingConfigException) inside its own `run_and_report`, which
prints a 15-line listing and exits 1 before `gsm.cli.main.main` sees the exception. So `main` checks
the group overrides first, against the same options Hydra would search (the YAML files of the package
gsm.conf), and exits 2 with

    gsm: error: sampler=dpm is not an option of group sampler (did you mean ddpm? options: ddim, ddpm, ...)

Overrides of groups gsm does not ship (hydra/launcher=...), and every override when the user adds
config folders of their own (--config-dir, hydra.searchpath), are left to Hydra.
"""
from __future__ import annotations

import difflib
import re
from importlib import resources

USER_CONFIGS = ("--config-dir", "-cd", "--config-path", "-cp", "hydra.searchpath")


def group_options() -> dict[str, list[str]]:
    """{group: sorted option names} of the config groups shipped in gsm.conf (conf/<group>/<option>.yaml)."""
    root = resources.files("gsm.conf")
    return {d.name: sorted(f.name[:-5] for f in d.iterdir() if f.name.endswith(".yaml"))
            for d in root.iterdir() if d.is_dir() and not d.name.startswith(("_", "."))}


def _values(arg: str) -> tuple[str, list[str]] | None:
    """(group, option names) of a group override `[+|++]group=value[,value...]`, or None (not one, or a
    form this check leaves to Hydra: deletion, glob, a parse error)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        o = OverridesParser.create().parse_overrides([arg])[0]
        if o.is_delete():
            return None
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
    except Exception:      # Hydra's parser and its sweep types raise their own errors: Hydra reports them
        return None
    return o.key_or_group, values


def unknown_option(args: list[str]) -> str | None:
    """The one-line error for the first group override in `args` that names no option, else None."""
    if any(a.split("=")[0] in USER_CONFIGS or a.startswith(USER_CONFIGS) for a in args):
        return None
    options = group_options()
    for arg in args:
        m = re.match(r"^\+{0,2}([A-Za-z_]\w*)(@[\w.]*)?=", arg)
        if not m or m.group(1) not in options:
            continue
        parsed = _values(arg)
        if parsed is None:
            continue
        group, values = parsed
        for value in values:
            if value not in options[group]:
                return _message(group, value, options[group])
    return None


def _message(group: str, value: str, options: list[str]) -> str:
    close = difflib.get_close_matches(value, options, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"gsm: error: {group}={value} is not an option of group {group} ({hint}options: {', '.join(options)})"
