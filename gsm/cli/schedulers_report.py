"""The schedulers study (`gsm +experiment=schedulers`) in gsm-report: W2² per scheduler, NFE and score.

`write_schedulers_report(sweep_dir, rows)` (rows of `gsm.cli.report.job_row`, swept keys sampler.scheduler,
sampler.nfe and score) writes

* `report_schedulers.png`: one panel per score (oracle, plugin, sgd), x = NFE, measured w2_exact (mean ± 2 s.e.,
  markers) and w2_predicted (lines) per scheduler;
* `report_schedulers.md`: per score, a table scheduler × NFE of "measured ± s.e. (predicted) #rank", and per
  NFE the Kendall τ between the oracle ranking and the learned-score rankings (measured), the question
  being: does the ranking of samplers under the exact score survive a learned score?
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

from gsm.io import savefig_atomic, write_text_atomic

SCORES = ("oracle", "plugin", "sgd")


def results_by_cell(rows, key: str = "sampler.scheduler"):
    """{(score, nfe, scheduler): row} over ok rows, and the sorted NFE and scheduler lists (key: the swept
    parameter that names the compared samplers, e.g. method for +experiment=flow_vs_diffusion)."""
    t = {(r["score"], int(float(r["sampler.nfe"])), r[key]): r for r in rows
         if r["status"] == "ok" and r.get("w2_exact_mean") is not None}
    nfes = sorted({k[1] for k in t})
    scheds = sorted({k[2] for k in t})
    return t, nfes, scheds


def ranking(t: dict, score: str, nfe: int, scheds: list) -> list:
    """Schedulers present at (score, nfe), best (smallest measured W2²) first."""
    have = [s for s in scheds if (score, nfe, s) in t]
    return sorted(have, key=lambda s: t[score, nfe, s]["w2_exact_mean"])


def kendall_tau(va: dict, vb: dict, rel: float = 1e-9) -> float | None:
    """Kendall's τ between two scorings {item: value} over their common items: Σ sign(Δa)·sign(Δb) over the
    pairs, divided by the pairs not tied in either (a tie: |Δ| ≤ rel·max|value|; e.g. DDIM and Euler give the
    same law). None when no pair is untied."""
    common = [x for x in va if x in vb]
    ta, tb = rel * max(map(abs, va.values())), rel * max(map(abs, vb.values()))
    sgn = lambda d, tol: 0 if abs(d) <= tol else (1 if d > 0 else -1)
    pairs = [(sgn(va[x] - va[y], ta), sgn(vb[x] - vb[y], tb)) for x, y in combinations(common, 2)]
    untied = [p for p in pairs if p[0] and p[1]]
    return sum(a * b for a, b in untied) / len(untied) if untied else None


def markdown(t, nfes, scheds, item: str = "scheduler") -> str:
    """The tables and the ranking comparison as markdown (item: the first column's header)."""
    out = []
    for score in SCORES:
        if not any(k[0] == score for k in t):
            continue
        out += [f"### score = {score}", "", f"| {item} | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                "|---|" + "---|" * len(nfes)]
        ranks = {n: ranking(t, score, n, scheds) for n in nfes}
        for s in scheds:
            cells = []
            for n in nfes:
                r = t.get((score, n, s))
                cells.append("" if r is None else f"{r['w2_exact_mean']:.4g} ± {r['w2_exact_stderr'] or 0:.2g} "
                              f"({r['w2_predicted']:.4g}) #{ranks[n].index(s) + 1}")
            out.append(f"| {s} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["### ranking: oracle vs learned scores (Kendall τ of the measured W2², ties excluded; 1 = same order)", "",
            "| NFE | best (oracle) | best (plugin) | best (sgd) | τ(oracle, plugin) | τ(oracle, sgd) |",
            "|---|---|---|---|---|---|"]
    for n in nfes:
        rk = {sc: ranking(t, sc, n, scheds) for sc in SCORES}
        best = [rk[sc][0] if rk[sc] else "" for sc in SCORES]
        vals = {sc: {s: t[sc, n, s]["w2_exact_mean"] for s in rk[sc]} for sc in SCORES}
        taus = [kendall_tau(vals["oracle"], vals[sc]) if vals["oracle"] and vals[sc] else None
                for sc in ("plugin", "sgd")]
        out.append(f"| {n} | " + " | ".join(best) + " | "
                   + " | ".join("" if x is None else f"{x:+.2f}" for x in taus) + " |")
    return "\n".join(out) + "\n"


def figure(t, nfes, scheds):
    import matplotlib.ticker

    from gsm.figures import pyplot
    plt = pyplot()

    scores = [sc for sc in SCORES if any(k[0] == sc for k in t)]
    fig, axes = plt.subplots(1, len(scores), figsize=(5 * len(scores), 4.5), sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, score in zip(axes[0], scores):
        for i, s in enumerate(scheds):
            pts = [(n, t[score, n, s]) for n in nfes if (score, n, s) in t]
            if not pts:
                continue
            xs = [n for n, _ in pts]
            ax.errorbar(xs, [r["w2_exact_mean"] for _, r in pts], yerr=[2 * (r["w2_exact_stderr"] or 0) for _, r in pts],
                        fmt="osv^DPX"[i % 7], mfc="none", color=cmap(i), ms=4 + 1.5 * (i % 4), capsize=2,
                        label=s.replace("Scheduler", ""))     # open markers of several sizes: equal laws stay visible
            ax.plot(xs, [r["w2_predicted"] for _, r in pts], "--", color=cmap(i), lw=1)
        ax.set(xscale="log", yscale="log", xlabel="NFE", title=f"score = {score}")
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.25)
    axes[0][0].set_ylabel("W2² (markers: w2_exact ± 2 s.e.; dashed: predicted)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def write_ranking_report(sweep_dir, rows, *, name: str, key: str = "sampler.scheduler", item: str = "scheduler",
                         extra=None) -> list[Path]:
    """Writes report_<name>.png (`figure`) and report_<name>.md (`markdown`, then `extra(t, nfes, items)` if
    given) for a study swept over `key` × sampler.nfe × score, prints the ranking comparison; returns the paths."""
    from gsm.figures import pyplot
    plt = pyplot()

    sweep_dir = Path(sweep_dir)
    t, nfes, items = results_by_cell(rows, key=key)
    if not t:
        return []
    md = markdown(t, nfes, items, item=item) + ("\n" + extra(t, nfes, items) if extra else "")
    md_path, png_path = sweep_dir / f"report_{name}.md", sweep_dir / f"report_{name}.png"
    write_text_atomic(md_path, md)
    fig = figure(t, nfes, items)
    savefig_atomic(fig, png_path, dpi=120)
    plt.close(fig)
    print(md[md.index("### ranking"):])
    return [png_path, md_path]


def write_schedulers_report(sweep_dir, rows) -> list[Path]:
    """Writes report_schedulers.png and report_schedulers.md, prints the ranking comparison; returns the paths."""
    return write_ranking_report(sweep_dir, rows, name="schedulers")
