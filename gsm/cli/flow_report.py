"""The flow_vs_diffusion study (`gsm +experiment=flow_vs_diffusion`) in gsm-report: W2² per method, NFE and field.

`write_flow_report(sweep_dir, rows)` (rows of `gsm.cli.report.job_row`, swept keys method, sampler.nfe and
score) writes, with the tables and the figure of the schedulers study (`gsm.cli.schedulers_report`):

* `report_flow_vs_diffusion.png`: one panel per field (oracle: the exact score / velocity; plugin: the
  empirical minimiser at N of the method's objective; sgd: SGD on that objective, DSM-SGD or CFM-SGD, at the
  same τ, b and steps for every method), x = NFE, measured w2_exact (mean ± 2 s.e., markers) and w2_predicted
  (lines) per method;
* `report_flow_vs_diffusion.md`: per field, a table method × NFE of "measured ± s.e. (predicted) #rank"; per
  NFE the best method and the Kendall τ between the exact-field ranking and the plug-in and SGD rankings: does
  the ranking at equal NFE survive a field learned from N samples, and a finite SGD budget? Then per learned
  field the z = (measured − predicted)/s.e. of every cell, with SGD's relaxation times at the slowest level.
"""
from __future__ import annotations

from pathlib import Path

from gsm.cli.schedulers_report import write_ranking_report

LEARNED = ("plugin", "sgd")     # the fields with an error bar (the exact field is deterministic)


def z_markdown(t: dict, nfes: list, methods: list) -> str:
    """Per learned field, a table method × NFE of z = (w2_exact − w2_predicted)/s.e. (sgd: with the relaxation
    times at the slowest level, how far from stationary the budget left SGD), and the range of the z's."""
    out = []
    for field in LEARNED:
        cells = {(n, m): t[field, n, m] for n in nfes for m in methods if (field, n, m) in t}
        zs = [r["z_exact"] for r in cells.values() if r.get("z_exact") is not None]
        if not zs:
            continue
        rt = " (relaxation times)" if field == "sgd" else ""
        out += [f"### z = (measured − predicted)/s.e., score = {field}{rt}: {len(zs)} cells in "
                f"[{min(zs):+.2f}, {max(zs):+.2f}], {sum(abs(z) <= 3 for z in zs)} within 3 s.e.", "",
                "| method | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---|" * len(nfes)]
        for m in methods:
            row = []
            for n in nfes:
                r = cells.get((n, m))
                z = None if r is None else r.get("z_exact")
                txt = "" if z is None else f"{z:+.2f}"
                if txt and field == "sgd" and r.get("relaxation_times") is not None:
                    txt += f" ({r['relaxation_times']:.2g})"
                row.append(txt)
            out.append(f"| {m} | " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def write_flow_report(sweep_dir, rows) -> list[Path]:
    """Writes report_flow_vs_diffusion.png and .md, prints the ranking comparison and the z's; returns the paths."""
    return write_ranking_report(sweep_dir, rows, name="flow_vs_diffusion", key="method", item="method",
                                extra=z_markdown)
