"""Range checks for the constructors of the config groups (issue 14, "Validation from the constructors").

Each check raises a one-line ValueError `<key> must be <range>, got <value>`, `key` the parameter's config
key (sampler.gamma, data.dim, ...): `gsm.pipeline.validate` instantiates every group under
`as_config_error`, which turns it into the `gsm: error: <key> must be ...` line of the gsm command (exit 2).
"""
from __future__ import annotations

import math


def _range(low, high, low_open: bool, high_open: bool, integer: bool) -> str:
    rng = "an integer " if integer else ""
    if low is not None and high is not None:
        rng += f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        rng += f"{'>' if low_open else '>='} {low}"
    elif high is not None:
        rng += f"{'<' if high_open else '<='} {high}"
    return rng.strip()


def number(key: str, value, low=None, high=None, *, low_open: bool = False, high_open: bool = False,
           integer: bool = False, none_ok: bool = False, why: str = ""):
    """`value` as a float (an int with `integer`) when it is a finite number (not a bool or a string) in the
    range; else ValueError `<key> must be <range>[ or null][ (why)], got <value>`. None passes with none_ok."""
    if value is None and none_ok:
        return None
    try:
        v = None if isinstance(value, (bool, str, bytes)) else float(value)
    except (TypeError, ValueError, RuntimeError):     # RuntimeError: a tensor of several values
        v = None
    ok = v is not None and math.isfinite(v) and (not integer or v.is_integer())
    ok = ok and (low is None or (v > low if low_open else v >= low))
    ok = ok and (high is None or (v < high if high_open else v <= high))
    if not ok:
        rng = _range(low, high, low_open, high_open, integer)
        if not rng or (v is not None and not math.isfinite(v)):
            rng = f"finite and {rng}" if rng else "a finite number"
        raise ValueError(f"{key} must be {rng}{' or null' if none_ok else ''}{f' ({why})' if why else ''}, "
                         f"got {value}")
    return int(v) if integer else v


def choice(key: str, value, options):
    """`value` when it is one of `options`; else ValueError `<key> must be one of a | b, got <value>`."""
    if not isinstance(value, (str, bool)) or value not in options:
        shown = " | ".join(str(o).lower() if isinstance(o, bool) else str(o) for o in options)    # YAML's true | false
        raise ValueError(f"{key} must be one of {shown}, got {value}")
    return value
