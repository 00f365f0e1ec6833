"""The runs of a folder (a Hydra multirun dir, or any folder of runs), as `gsm-report` and its study tables
read them: `load_jobs(folder)`.

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


def is_run(folder: Path) -> bool:
    """A run's folder: it holds results.json or Hydra's .hydra/ (a job that never wrote results.json)."""
    return (folder / "results.json").is_file() or (folder / ".hydra").is_dir()


def run_folders(folder) -> list[tuple[int | str, Path]]:
    """[(job id, folder)] of the runs in `folder`: a multirun dir's numeric jobs 0/, 1/, ... (id: the
    number); else `folder` itself when it is a run (id: its name); else every run below it, single
    runs of outputs/<date>/<time> and sweeps' jobs alike (id: the path relative to `folder`), sorted."""
    folder = Path(folder)
    jobs = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if jobs and (folder / "multirun.yaml").exists() or any(is_run(p) for p in jobs):
        return [(int(p.name), p) for p in jobs]
    if is_run(folder):
        return [(folder.name, folder)]
    found = {p.parent for name in ("results.json", ".hydra") for p in folder.rglob(name)}
    return [(p.relative_to(folder).as_posix(), p) for p in sorted(found) if is_run(p)]


def load_jobs(sweep_dir) -> tuple[list[dict], list[str]]:
    """Reads a folder of runs (`run_folders`: a multirun dir, one run, or runs below it): ([{job, dir,
    overrides, results (None if missing or unreadable), status}], swept parameter keys in override order)."""
    sweep_dir = Path(sweep_dir)
    jobs = []
    for job, d in run_folders(sweep_dir):
        res, status = None, "missing"
        if (d / "results.json").exists():
            try:
                res = json.loads((d / "results.json").read_text())
                status = job_status(d, res)     # a `running` job whose process is gone: lost
            except (OSError, ValueError):
                status = "unreadable"
        jobs.append({"job": job, "dir": d, "overrides": _overrides(d), "results": res, "status": status})
    keys = []
    for j in jobs:
        keys += [k for k in j["overrides"] if k not in keys]
    swept = [k for k in keys if len({j["overrides"].get(k) for j in jobs}) > 1]
    multirun = sweep_dir / "multirun.yaml"
    if multirun.exists():
        params = OmegaConf.select(OmegaConf.load(multirun), "hydra.sweeper.params") or {}
        swept += [k.lstrip("+~") for k in params if k.lstrip("+~") not in swept]
    return jobs, swept
