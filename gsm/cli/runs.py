"""`gsm.load_runs(folder)`: the runs of a folder as a pandas DataFrame, one row per run.

    import gsm
    df = gsm.load_runs("outputs/multirun/2026-12-03/09-12-44")      # or a folder of single runs, or one run
    df[["train.tau", "w2_exact_mean", "w2_exact_stderr", "w2_predicted", "in_regime"]]

The folder is read as `gsm-report` reads it (`gsm.cli.tables.run_folders`); the numbers are those of its
report.csv (`gsm.cli.report.job_row`), so a DataFrame and a report never disagree. pandas is an optional
extra: `pip install 'gsm[tables]'`.
"""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from gsm.cli.report import job_row
from gsm.cli.tables import load_jobs

FIRST = ["run", "status", "w2_exact_mean", "w2_exact_stderr", "w2_predicted", "w2_empirical_mean",
         "w2_empirical_stderr", "w2_predicted_empirical", "in_regime", "regime_reason", "seconds"]


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("gsm.load_runs needs pandas: pip install 'gsm[tables]'") from None
    return pandas


def run_config(job: dict) -> dict:
    """The run's config: results.json's (resolved, as run), else .hydra/config.yaml (a run that never
    wrote results.json), else {}."""
    config = (job["results"] or {}).get("config")
    if isinstance(config, dict):
        return config
    path = Path(job["dir"]) / ".hydra" / "config.yaml"
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception:     # absent, unparsable or unresolvable: the row keeps its numbers and status
        return {}


def load_runs(folder):
    """A DataFrame with one row per run of `folder` (a multirun dir, a folder of runs, or one run).

    Columns: `run` (the job number, or the run's path relative to `folder`), `status`, the measured W2²
    `<w2_exact | w2_empirical | w2_empirical_debiased>_{mean,stderr}`, the predicted `w2_predicted`,
    `w2_predicted_empirical`, `w2_predicted_linear`, `z_exact`, `z_empirical`, `in_regime` (results.json
    `regime.ok`) and `regime_reason`, `seconds`, `error`, `term_<name>` per prediction term (report.csv's
    columns), every config key as a dotted name (`train.tau`, `sampler._target_`), and `dir`."""
    pd = _pandas()
    jobs, swept = load_jobs(folder)
    rows = []
    for job in jobs:
        row = {k: v for k, v in job_row(job, swept).items() if k not in swept}
        row["run"] = row.pop("job")
        config = pd.json_normalize(run_config(job), sep=".").to_dict("records")
        row.update({k: _cell(v) for k, v in (config[0] if config else {}).items() if k not in row})
        row["dir"] = str(job["dir"])
        rows.append(row)
    df = pd.DataFrame(rows)
    return df[[c for c in FIRST if c in df] + [c for c in df if c not in FIRST]]


def _cell(value):
    """A config value as a DataFrame cell: lists (a custom spectrum's eigenvalues) as their JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value
