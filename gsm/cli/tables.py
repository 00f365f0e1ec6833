"""The jobs of a Hydra multirun dir, as `gsm-report` and its study tables read them: `load_jobs(sweep_dir)`.

A module of its own so that the study tables (`gsm.cli.pg_report`, `gsm.cli.schedulers_report`), which
`gsm.cli.report` calls, read the jobs without importing `gsm.cli.report` back (no import cycle).
"""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from gsm.pipeline.status import job_status


def _overrides(job_dir: Path) -> dict:
    """{key: value string} from <job>/.hydra/overrides.yaml (leading +, ++, ~ stripped from keys)."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    out = {}
    for item in OmegaConf.to_container(OmegaConf.load(path)) or []:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def load_jobs(sweep_dir) -> tuple[list[dict], list[str]]:
    """Reads a multirun dir: ([{job, dir, overrides, results (None if missing or unreadable), status}],
    swept parameter keys in override order)."""
    sweep_dir = Path(sweep_dir)
    jobs = []
    for d in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        res, status = None, "missing"
        if (d / "results.json").exists():
            try:
                res = json.loads((d / "results.json").read_text())
                status = job_status(d, res)     # a `running` job whose process is gone: lost
            except (OSError, ValueError):
                status = "unreadable"
        jobs.append({"job": int(d.name), "dir": d, "overrides": _overrides(d), "results": res, "status": status})
    keys = []
    for j in jobs:
        keys += [k for k in j["overrides"] if k not in keys]
    swept = [k for k in keys if len({j["overrides"].get(k) for j in jobs}) > 1]
    multirun = sweep_dir / "multirun.yaml"
    if multirun.exists():
        params = OmegaConf.select(OmegaConf.load(multirun), "hydra.sweeper.params") or {}
        swept += [k.lstrip("+~") for k in params if k.lstrip("+~") not in swept]
    return jobs, swept
