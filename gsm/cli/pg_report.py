"""The Pierret–Galerne table of a `+experiment=pg_table` sweep (`gsm-report` calls `write_pg_table` when
sampler.scheme and sampler.nfe are swept): schemes × NFE × ε × init, measured W2² against predicted.

Writes, in the sweep dir: `pg_table.csv` (long format, one row per job, with the score evaluations
actually made, `nfe`, next to the budget), `pg_table.md` and `pg_table.tex` (wide: one block per
(init, ε), rows = schemes, columns = NFE budget, cells `measured ± s.e. / predicted` W2²; with the exact
score the measurement is the exact law, s.e. 0)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from gsm.cli.tables import load_jobs
from gsm.io import write_text_atomic

KEYS = ("sampler.scheme", "sampler.init", "sampler.eps", "sampler.nfe")
SCHEME_ORDER = ("em", "ei", "ddpm", "euler", "heun", "rk4", "sde", "ode")


def pg_rows(sweep_dir) -> list[dict]:
    """One dict per ok job: scheme, init, eps, nfe_budget, nfe, steps, measured/s.e./predicted W2²."""
    jobs, _ = load_jobs(sweep_dir)
    rows = []
    for j in jobs:
        r = j["results"] or {}
        if j["status"] != "ok":
            continue
        cfg = (r.get("config") or {}).get("sampler", {})
        w = r.get("w2_exact") or {}
        rows.append({"job": j["job"], "scheme": cfg.get("scheme"), "init": cfg.get("init"), "eps": cfg.get("eps"),
                     "nfe_budget": cfg.get("nfe"), "nfe": r.get("nfe"), "steps": r.get("steps"),
                     "w2_exact": w.get("mean"), "stderr": w.get("stderr"), "w2_predicted": r.get("w2_predicted"),
                     **{f"term_{k}": v for k, v in (r.get("prediction_terms") or {}).items()
                        if k in ("truncation", "initialization", "discretization", "generalization")}})
    rows.sort(key=lambda x: (x["init"] or "", x["eps"] or 0, SCHEME_ORDER.index(x["scheme"])
                             if x["scheme"] in SCHEME_ORDER else 99, x["nfe_budget"] or 0))
    return rows


def _cell(r) -> str:
    if r is None:
        return ""
    se = f" ± {r['stderr']:.1g}" if r.get("stderr") else ""
    return f"{r['w2_exact']:.4g}{se} / {r['w2_predicted']:.4g}"


def _blocks(rows):
    nfes = sorted({r["nfe_budget"] for r in rows if r["nfe_budget"] is not None})
    for init in sorted({r["init"] for r in rows}):
        for eps in sorted({r["eps"] for r in rows if r["init"] == init}):
            sub = [r for r in rows if r["init"] == init and r["eps"] == eps]
            schemes = [s for s in SCHEME_ORDER if any(r["scheme"] == s for r in sub)]
            table = []
            for s in schemes:
                by = {r["nfe_budget"]: r for r in sub if r["scheme"] == s}
                nfe_made = "/".join(str(by[n]["nfe"]) for n in nfes if n in by)
                table.append((s, nfe_made, [_cell(by.get(n)) for n in nfes]))
            yield init, eps, nfes, table


def markdown(rows) -> str:
    out = ["# Pierret–Galerne table: W2² measured ± s.e. / predicted", "",
           "Columns: the NFE budget; `nfe` lists the score evaluations actually made (heun: 2 per step, "
           "rk4: 4 per step, K = budget // evaluations per step).", ""]
    for init, eps, nfes, table in _blocks(rows):
        out += [f"## init = {init}, ε = {eps:g}", "", "| scheme | nfe | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                "|---|---|" + "---|" * len(nfes)]
        out += [f"| {s} | {made} | " + " | ".join(cells) + " |" for s, made, cells in table]
        out.append("")
    return "\n".join(out)


def latex(rows) -> str:
    out = []
    for init, eps, nfes, table in _blocks(rows):
        out += [r"\begin{table}[h]\centering", r"\small",
                rf"\caption{{$W_2^2$ measured / predicted, init = {init}, $\varepsilon = {eps:g}$}}",
                r"\begin{tabular}{l" + "c" * len(nfes) + "}", r"\hline",
                "scheme & " + " & ".join(f"NFE {n}" for n in nfes) + r" \\", r"\hline"]
        out += [f"{s} & " + " & ".join(c.replace("±", r"$\pm$") for c in cells) + r" \\" for s, _, cells in table]
        out += [r"\hline", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def write_pg_table(sweep_dir) -> list[Path]:
    """pg_table.csv, .md and .tex in the sweep dir; returns their paths (none when no job is ok)."""
    sweep_dir = Path(sweep_dir)
    rows = pg_rows(sweep_dir)
    if not rows:
        return []
    buf = io.StringIO()
    header = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, header, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    paths = [sweep_dir / "pg_table.csv", sweep_dir / "pg_table.md", sweep_dir / "pg_table.tex"]
    for p, text in zip(paths, (buf.getvalue(), markdown(rows), latex(rows))):
        write_text_atomic(p, text)
    return paths
