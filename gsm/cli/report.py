"""`gsm-report [folder]`: the table, the figures and a TensorBoard run of a Hydra sweep or any folder of runs.

    gsm +experiment=vs_n                          # a sweep: outputs/multirun/<date>/<time>/{0,1,...}
    gsm-report                                    # the latest sweep (outputs/multirun/<date>/<time>), else outputs/
    gsm-report outputs/multirun/<date>/<time>     # or: python -m gsm.cli.report <dir>
    gsm-report outputs/2026-12-03                 # a folder of single runs (outputs/<date>/<time>)

Inputs. The jobs of a multirun dir are the sub-folders with a numeric name (0/, 1/, ...); in any other
folder, the folder itself when it is a run, else every run below it (a folder holding results.json or
.hydra/; `gsm.cli.tables.run_folders`), named by its path relative to the folder. Per job: `results.json` (written
by `gsm.pipeline.run.run`) and `.hydra/overrides.yaml` (its task overrides, e.g. `- data.n=40`). The swept
parameters are the override keys whose value differs between jobs, plus the keys of
`hydra.sweeper.params` in `<dir>/multirun.yaml`.

Outputs, in the multirun dir (every file written atomically):
* `report.csv`: one row per job (COLUMNS, then the swept parameters, then `term_<name>` per prediction
  term). A job without results.json has status `missing`; a job whose status is not `ok` (diverged,
  interrupted, failed, running) keeps its row, with the numbers it has and, when failed, `error` (type:
  message). A job whose results.json says `running` but whose process is gone (killed by SIGKILL or the
  OOM killer; `gsm.pipeline.status.job_status`) is `lost`. The printed summary counts the jobs per status and
  lists every job that did not finish ok with the reason. `z_exact` = (w2_exact − w2_predicted) /
  stderr, `z_empirical` the same for w2_empirical against w2_predicted_empirical; `in_regime` is the run's
  own verdict (results.json `regime.ok`, `gsm.theory.regime`) and `regime_reason` its dominant reason; the
  summary lists every finished job out of regime with that reason.
* `report_<x>.png` per study: measured mean ± 2 s.e. (error bars) against the predicted totals and
  each prediction term (lines), x = the swept parameter (log axes when every value is positive).
  With several swept parameters, x is the numeric one with the most values, and there is one figure
  per combination of the others: `report_<x>__<key>=<value>.png`.
* the studies' own tables and figures: `+experiment=pg_table` (`gsm.cli.pg_report`), `schedulers`
  (`gsm.cli.schedulers_report`), `flow_vs_diffusion` (`gsm.cli.flow_report`), `where_theory_stops` and
  `memorization` (`gsm.cli.mixture_report`).
* `tb_report/`: a TensorBoard run with the figures (`report/<study>`) and the CSV numbers as scalars
  `<study>/<column>` (float32, which TensorBoard's default loader shows; report.csv has them in full),
  step = the swept value when all values are positive integers, else its rank (the value itself is
  then the scalar `<study>/<x>`). Replaced as a whole on each run.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from gsm.cli.tables import load_jobs, run_folders
from gsm.io import savefig_atomic, write_text_atomic

MEASURED = ("w2_exact", "w2_empirical", "w2_empirical_debiased")       # {mean, stderr, n} in results.json
PREDICTED = ("w2_predicted", "w2_predicted_empirical", "w2_predicted_linear")
NOT_TERMS = ("total", "eps_tau", "d_over_n")                           # prediction_terms that are not terms
TERM_COLORS = {"noise": "tab:green", "t_min": "tab:green", "discretization": "tab:red", "mixing": "tab:cyan",
               "initialization": "tab:cyan", "optimization": "tab:pink", "generalization": "tab:orange",
               "particles": "tab:olive", "sgd_mean_offset": "tab:brown"}
COLUMNS = ["job", "status", *[f"{k}_{s}" for k in MEASURED for s in ("mean", "stderr")], *PREDICTED,
           "z_exact", "z_empirical", "d_over_n", "eps_tau", "relaxation_times", "in_regime", "regime_reason",
           "unstable_replicates", "seconds", "error"]
STYLE = {"w2_exact": ("k", "o"), "w2_empirical": ("tab:blue", "s"), "w2_empirical_debiased": ("tab:purple", "D"),
         "w2_predicted": ("k", "-"), "w2_predicted_empirical": ("tab:blue", "--"),
         "w2_predicted_linear": ("tab:purple", "-.")}


def _number(text):
    """float(text) when text is a number (the override values are strings), else None."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def job_row(job: dict, swept: list[str]) -> dict:
    """One CSV row (a dict over COLUMNS + swept + term_<name>); missing numbers are empty."""
    r = job["results"] or {}
    row = {"job": job["job"], "status": job["status"], "error": _error_text(r)}
    row.update({k: job["overrides"].get(k, "") for k in swept})
    for k in MEASURED:
        m = r.get(k) if isinstance(r.get(k), dict) else {}
        row[f"{k}_mean"], row[f"{k}_stderr"] = m.get("mean"), m.get("stderr")
    for k in PREDICTED:
        row[k] = r.get(k)
    for z, m, p in (("z_exact", "w2_exact", "w2_predicted"), ("z_empirical", "w2_empirical", "w2_predicted_empirical")):
        mean, se, pred = row[f"{m}_mean"], row[f"{m}_stderr"], row[p]
        row[z] = (mean - pred) / se if None not in (mean, se, pred) and se > 0 else None
    diag = r.get("diagnostics") or {}
    row["d_over_n"], row["eps_tau"] = diag.get("d_over_n"), diag.get("eps_tau")
    row["relaxation_times"] = r.get("relaxation_times")
    regime = r.get("regime")
    if row["status"] == "ok" and regime:                  # the run's own verdict (gsm.theory.regime)
        row["in_regime"] = bool(regime["ok"])
        row["regime_reason"] = regime["reasons"][0] if regime["reasons"] else ""
    elif row["status"] == "ok" and row["w2_predicted"] is not None:     # runs written before the verdict existed
        row["in_regime"] = ((row["d_over_n"] is None or row["d_over_n"] <= 0.2)
                            and (row["eps_tau"] is None or row["eps_tau"] <= 0.005)
                            and (row["relaxation_times"] is None or row["relaxation_times"] >= 5))
    row["unstable_replicates"], row["seconds"] = r.get("unstable_replicates"), r.get("seconds")
    for k, v in (r.get("prediction_terms") or {}).items():
        if k not in NOT_TERMS:
            row[f"term_{k}"] = v
    return row


def _error_text(results: dict) -> str:
    """'<type>: <message>' of a failed run, else ''."""
    err = results.get("error") if isinstance(results.get("error"), dict) else None
    return f"{err.get('type')}: {err.get('message')}" if err else ""


def write_csv(path, rows: list[dict], swept: list[str]) -> list[str]:
    """report.csv: header COLUMNS[:2] + swept + COLUMNS[2:] + term columns; floats in repr precision."""
    terms = []
    for row in rows:
        terms += [k for k in row if k.startswith("term_") and k not in terms]
    header = COLUMNS[:2] + swept + COLUMNS[2:] + terms
    buf = io.StringIO()
    w = csv.DictWriter(buf, header, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    write_text_atomic(path, buf.getvalue())
    return header


def studies(rows: list[dict], swept: list[str]) -> list[tuple[str, str, dict, list[dict]]]:
    """Groups the ok rows into studies: [(name, x key, {other key: value}, rows sorted by x)].
    x = the numeric swept key with the most distinct values (else the first swept key); one study per
    combination of the other swept keys."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok or not swept:
        return []
    numeric = [k for k in swept if all(_number(r[k]) is not None for r in ok)]
    x = max(numeric, key=lambda k: len({r[k] for r in ok})) if numeric else swept[0]
    others = [k for k in swept if k != x]
    groups = {}
    for r in ok:
        groups.setdefault(tuple(r[k] for k in others), []).append(r)
    out = []
    for combo, rs in groups.items():
        fixed = dict(zip(others, combo))
        rs.sort(key=lambda r: (_number(r[x]) if x in numeric else 0, r["job"]))
        name = "__".join([x] + [f"{k}={v}" for k, v in fixed.items()])
        out.append((name, x, fixed, rs))
    return out


def _positive(xs, vals):
    """The points (x, v) with v present and > 0 (log axes)."""
    return [(x, v) for x, v in zip(xs, vals) if v is not None and v > 0]


def _plot_measured(ax, xs, rows: list[dict]) -> list:
    """The measured means ± 2 s.e. (error bars); returns the positive means (for the y range)."""
    ys = []
    for k in MEASURED:
        pts = [(x, r[f"{k}_mean"], r[f"{k}_stderr"] or 0.0) for x, r in zip(xs, rows) if r[f"{k}_mean"] is not None]
        if pts:
            color, marker = STYLE[k]
            px, pm, ps = zip(*pts)
            ax.errorbar(px, pm, yerr=[2 * s for s in ps], fmt=marker, color=color, ms=7 if k == "w2_exact" else 9,
                        mfc=color if k == "w2_exact" else "none", capsize=3, label=f"{k} (mean ± 2 s.e.)", zorder=3)
            ys += [m for m in pm if m > 0]
    return ys


def _plot_predicted(ax, xs, rows: list[dict]) -> list:
    """The predicted totals (lines); returns their positive values (for the y range)."""
    ys = []
    for k in PREDICTED:
        pts = _positive(xs, [r[k] for r in rows])
        if pts:
            color, ls = STYLE[k]
            ax.plot(*zip(*pts), ls=ls, color=color, lw=1.5, label=k, zorder=2)
            ys += [v for _, v in pts]
    return ys


def _plot_terms(ax, xs, rows: list[dict], floor: float, cmap):
    """The prediction terms (dotted lines), each labelled with its count of points ≤ 0 (not drawn); terms
    below `floor` everywhere are left out."""
    terms = []
    for r in rows:
        terms += [k for k in r if k.startswith("term_") and k not in terms]
    for i, k in enumerate(terms):
        vals = [r.get(k) for r in rows]
        pts = _positive(xs, vals)
        if not pts or max(v for _, v in pts) < floor:
            continue
        dropped = sum(v is not None and v <= 0 for v in vals)
        label = k[5:] + (f" ({dropped} points ≤ 0 not shown)" if dropped else "")
        color = TERM_COLORS.get(k[5:], cmap(i % 10))
        ax.plot(*zip(*pts), ":", marker=".", color=color, lw=1.2, label=label, zorder=1)


def _shade_outside_regime(ax, xs, rows: list[dict]):
    """A grey band at each point where the first-order theory is not expected to hold (in_regime False)."""
    outside = [x for x, r in zip(xs, rows) if r.get("in_regime") is False]
    for i, x in enumerate(outside):
        ax.axvline(x, color="0.88", lw=10, zorder=0, label="outside the first-order regime" if i == 0 else None)


def plot_study(x_key: str, fixed: dict, rows: list[dict], title: str = ""):
    """Figure: measured mean ± 2 s.e. (error bars) and predicted totals and terms (lines) against x."""
    import matplotlib.ticker

    from gsm.figures import pyplot
    plt = pyplot()

    xs = [_number(r[x_key]) for r in rows]
    categorical = None in xs
    if categorical:
        xs = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    ys = _plot_measured(ax, xs, rows)
    ys += _plot_predicted(ax, xs, rows)
    floor = 1e-3 * min(ys) if ys else 0.0     # terms far below the totals (e.g. 1e-30 round-off) stay off the plot
    _plot_terms(ax, xs, rows, floor, plt.get_cmap("tab10"))
    _shade_outside_regime(ax, xs, rows)
    if not categorical and all(x > 0 for x in xs):
        ax.set_xscale("log")
    if ys:
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(floor, ax.get_ylim()[0]))
    if categorical or len(xs) <= 12:       # the swept values themselves as x ticks
        ax.set_xticks(xs, [str(r[x_key]) for r in rows])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fixed_txt = ", ".join(f"{k}={v}" for k, v in fixed.items())
    ax.set(xlabel=x_key, ylabel="W2² (squared Bures–Wasserstein)",
           title=title + (f"  [{fixed_txt}]" if fixed_txt else ""))
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def write_tensorboard(sweep_dir: Path, figures: dict, study_list) -> Path:
    """<dir>/tb_report: figures as images, the numbers as plain (float32) scalars (see module doc).
    Written in a temporary folder, then moved over the previous tb_report."""
    from torch.utils.tensorboard import SummaryWriter

    final = sweep_dir / "tb_report"
    tmp = Path(tempfile.mkdtemp(prefix=".tb_report.", dir=sweep_dir))
    tmp.chmod(0o755)
    try:
        w = SummaryWriter(log_dir=str(tmp))
        for name, fig in figures.items():
            w.add_figure(f"report/{name}", fig, 0, close=False)
        for name, x_key, _, rows in study_list:
            xs = [_number(r[x_key]) for r in rows]
            integer = None not in xs and all(x > 0 and x == int(x) for x in xs)
            for rank, (x, r) in enumerate(zip(xs, rows)):
                step = int(x) if integer else rank
                if not integer and x is not None:
                    w.add_scalar(f"{name}/{x_key}", x, step)
                for k, v in r.items():
                    if k not in ("job", "status", "in_regime") and isinstance(v, (int, float)) and not isinstance(v, bool):
                        w.add_scalar(f"{name}/{k}", float(v), step)
        w.close()
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def _fmt(v, spec=".4g"):
    return "" if v is None or v == "" else format(v, spec) if isinstance(v, float) else str(v)


_STATUS_LINE = {"diverged": "finished, diverged: job", "failed": "FAILED job", "lost": "LOST job",
                "interrupted": "interrupted job", "running": "running job", "missing": "missing job"}
_WHY = {"diverged": "every replicate diverged or was unstable (no W2)",
        "lost": "its process died without writing results.json (killed, out of memory, node lost)",
        "interrupted": "SIGINT or SIGTERM", "running": "still running (its process is alive)",
        "missing": "no results.json (not started, or its folder was not writable)",
        "unreadable": "results.json does not parse"}


def report(sweep_dir, tensorboard: bool = True) -> dict:
    """Reads the sweep, writes report.csv, one PNG per study and tb_report/; prints a summary table.
    Returns {"rows", "swept", "failed" (rows whose status is not ok), "by_status" ({status: rows}), "csv",
    "figures" (paths)}."""
    from gsm.figures import pyplot
    plt = pyplot()

    sweep_dir = Path(sweep_dir)
    jobs, swept = load_jobs(sweep_dir)
    if not jobs:
        raise SystemExit(f"gsm-report: error: no runs in {sweep_dir} (no job folders 0/, 1/, ..., no folder "
                         f"with results.json or .hydra/ below it)")
    rows = [job_row(j, swept) for j in jobs]
    csv_path = sweep_dir / "report.csv"
    write_csv(csv_path, rows, swept)
    study_list = studies(rows, swept)
    figures, paths = {}, []
    title = next((j["overrides"]["experiment"] for j in jobs if "experiment" in j["overrides"]), sweep_dir.name)
    for name, x_key, fixed, rs in study_list:
        fig = plot_study(x_key, fixed, rs, title)
        path = sweep_dir / f"report_{re.sub(r'[^A-Za-z0-9_.=+-]', '_', name)}.png"
        savefig_atomic(fig, path, dpi=120)
        figures[name], paths = fig, paths + [path]
    if tensorboard and study_list:
        write_tensorboard(sweep_dir, figures, study_list)
    if {"sampler.scheme", "sampler.nfe"} <= set(swept):     # +experiment=pg_table: the P–G table
        from gsm.cli.pg_report import write_pg_table
        paths += write_pg_table(sweep_dir)
    if {"sampler.scheduler", "sampler.nfe", "score"} <= set(swept):     # +experiment=schedulers
        from gsm.cli.schedulers_report import write_schedulers_report
        paths += write_schedulers_report(sweep_dir, rows)
    if {"method", "sampler.nfe", "score"} <= set(swept):     # +experiment=flow_vs_diffusion
        from gsm.cli.flow_report import write_flow_report
        paths += write_flow_report(sweep_dir, rows)
    if {"data.separation", "model"} <= set(swept):     # +experiment=where_theory_stops
        from gsm.cli.mixture_report import write_stops_report
        paths += write_stops_report(sweep_dir)
    if {"train.steps", "data.n"} <= set(swept):     # +experiment=memorization
        from gsm.cli.mixture_report import write_memorization_report
        paths += write_memorization_report(sweep_dir)
    for fig in figures.values():
        plt.close(fig)

    print(f"{len(rows)} jobs in {sweep_dir}, swept: {', '.join(swept) or '(none)'}")
    head = ["job", *swept, "status", "w2_exact", "± s.e.", "predicted", "z", "regime"]
    table = [head] + [[str(r["job"]), *[r[k] for k in swept], r["status"], _fmt(r["w2_exact_mean"]),
                       _fmt(r["w2_exact_stderr"], ".2g"), _fmt(r["w2_predicted"]), _fmt(r["z_exact"], "+.2f"),
                       {True: "yes", False: "no"}.get(r.get("in_regime"), "")] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    for line in table:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)))
    failed = [r for r in rows if r["status"] != "ok"]
    by_status = {}
    for r in rows:
        by_status.setdefault(r["status"], []).append(r)
    print(", ".join(f"{len(rs)} {st}" for st, rs in by_status.items()))
    for r in failed:       # what did not finish first, each with why
        print(f"{_STATUS_LINE.get(r['status'], r['status'] + ' job')} {r['job']}"
              f" ({', '.join(f'{k}={r[k]}' for k in swept)}): {r['error'] or _WHY.get(r['status'], r['status'])}")
    for r in rows:         # finished, but out of the theory's regime: the dominant reason
        if r.get("in_regime") is False and r.get("regime_reason"):
            print(f"out of regime: job {r['job']}: {r['regime_reason']}")
    print(f"wrote {csv_path}" + "".join(f"\nwrote {p}" for p in paths)
          + (f"\nwrote {sweep_dir / 'tb_report'}" if tensorboard and study_list else ""))
    return {"rows": rows, "swept": swept, "failed": failed, "by_status": by_status, "csv": csv_path,
            "figures": paths}


def latest_folder(outputs: Path = Path("outputs")) -> Path | None:
    """The latest sweep, outputs/multirun/<date>/<time> (Hydra's default names sort by time), else
    outputs/ itself when it holds runs, else None."""
    sweeps = [p for p in outputs.glob("multirun/*/*") if p.is_dir()]
    if sweeps:
        return max(sweeps, key=lambda p: (p.parent.name, p.name))
    return outputs if outputs.is_dir() and any(outputs.rglob("results.json")) else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gsm-report", description=__doc__.split("\n")[0])
    ap.add_argument("sweep_dir", type=Path, nargs="?",
                    help="a Hydra multirun dir (hydra.sweep.dir, holding 0/, 1/, ...) or any folder of runs; "
                         "default: the latest sweep under outputs/multirun, else outputs/")
    ap.add_argument("--no-tensorboard", action="store_true", help="skip the tb_report/ TensorBoard run")
    args = ap.parse_args(argv)
    if args.sweep_dir is None:
        args.sweep_dir = latest_folder()
        if args.sweep_dir is None:
            ap.error(f"no sweep under outputs/multirun and no run under outputs/ in {Path.cwd()}; name a folder")
        print(f"gsm-report: {args.sweep_dir} (the latest; name another folder to report it)")
    if not args.sweep_dir.is_dir():
        ap.error(f"not a directory: {args.sweep_dir}")
    if not run_folders(args.sweep_dir):
        ap.error(f"no runs in {args.sweep_dir} (no job folders 0/, 1/, ..., no folder with results.json or .hydra/)")
    report(args.sweep_dir, tensorboard=not args.no_tensorboard)
    return 0


if __name__ == "__main__":
    sys.exit(main())
