"""The two beyond-Gaussian studies in gsm-report (docs/beyond_gaussian.md): `+experiment=where_theory_stops`
and `+experiment=memorization`.

`write_stops_report(sweep_dir)` (swept keys data.separation and model) writes

* `report_where_theory_stops.md`: per N, one row per (Δ, score) with w2_ot_debiased ± s.e. (the true distance),
  the Gaussian-fit bound (w2_exact for a linear score, else w2_empirical_debiased), the linear prediction for
  the Gaussian surrogate (w2_predicted, or w2_predicted_linear), z = (w2_ot_debiased − prediction) / s.e.,
  w2_ot_surrogate, the first mode weight (true; none at Δ = 0, one Gaussian), memorized_fraction (fresh);
  then the answers: at which Δ the MLP beats the linear score (by > 2 s.e. of the difference) and from which
  Δ the prediction stops describing each score's true error (|z| > 3);
* `report_where_theory_stops.png`: one panel per N, w2_ot_debiased (± 2 s.e.) against Δ, one line per score,
  the linear prediction dashed, w2_ot_surrogate (a perfect linear score's error) dotted.

`write_memorization_report(sweep_dir)` (swept keys train.steps and data.n) writes

* `report_memorization.md`: per N and training steps, memorized_fraction ± s.e., its chance level
  memorized_fraction_fresh and w2_ot_debiased; per N the onset (the first steps at which the memorised
  fraction exceeds the chance level by > 3 s.e.) and the steps at which it crosses 1/2 (log-interpolated),
  with the empirical score's fraction (the memorising limit) when the sweep has model=empirical jobs;
* `report_memorization.png`: memorized_fraction against steps (log x), one line per N, the chance level
  dotted and the empirical score's value dashed.
"""
from __future__ import annotations

import math
from pathlib import Path

from gsm.cli.tables import load_jobs
from gsm.figures import pyplot
from gsm.io import savefig_atomic, write_text_atomic

SCORE_ORDER = ("linear", "mlp", "empirical", "oracle")
BEATS_SE, STOPS_Z, ONSET_SE = 2.0, 3.0, 3.0     # the answers' thresholds (module doc)


def _stat(results: dict, key: str) -> tuple:
    """(mean, stderr) of a {mean, stderr} key, (None, None) when absent."""
    v = results.get(key)
    return (v.get("mean"), v.get("stderr")) if isinstance(v, dict) else (None, None)


def _score_name(job: dict) -> str:
    """The model option (the swept override), else the score class's name."""
    if job["overrides"].get("model"):
        return job["overrides"]["model"]
    target = str(((job["results"].get("config") or {}).get("model") or {}).get("_target_", "?"))
    return target.rsplit(".", 1)[-1]


def _sampler_name(results: dict) -> str:
    """The sampler's class, its scheme and its number of steps K, e.g. 'Flow (euler), K = 10'."""
    sampler = (results.get("config") or {}).get("sampler") or {}
    name = str(sampler.get("_target_", "?")).rsplit(".", 1)[-1]
    scheme = f" ({sampler['scheme']})" if sampler.get("scheme") else ""
    return name + scheme + (f", K = {sampler['steps']}" if sampler.get("steps") else "")


def mixture_cells(sweep_dir) -> list[dict]:
    """One dict per ok job: separation, n, steps, score and the numbers of the module doc."""
    jobs, _ = load_jobs(sweep_dir)
    cells = []
    for j in jobs:
        r = j["results"] or {}
        if j["status"] != "ok" or not {"w2_ot_debiased", "memorized_fraction"} & set(r):
            continue
        data, train = (r.get("config") or {}).get("data", {}), (r.get("config") or {}).get("train", {})
        linear = isinstance(r.get("w2_exact"), dict)
        ot, ot_se = _stat(r, "w2_ot_debiased")
        pred = r.get("w2_predicted") if linear else r.get("w2_predicted_linear")
        bound = _stat(r, "w2_exact") if linear else _stat(r, "w2_empirical_debiased")
        # one Gaussian (Δ = 0): every particle ties (half to each component, by construction): nothing to report
        mw = {} if r.get("data_gaussian") else r.get("mode_weights") or {}
        cells.append({
            "job": j["job"], "separation": float(data.get("separation", math.nan)), "n": int(data.get("n", 0)),
            "steps": int(train.get("steps", 0)), "score": _score_name(j), "sampler": _sampler_name(r),
            "ot": ot, "ot_se": ot_se,
            "bound": bound[0], "bound_se": bound[1], "pred": pred,
            "z": (ot - pred) / ot_se if pred is not None and ot_se else None,
            "surrogate": _stat(r, "w2_ot_surrogate")[0], "surrogate_se": _stat(r, "w2_ot_surrogate")[1],
            "mode": (mw.get("mean") or [None])[0], "mode_se": (mw.get("stderr") or [None])[0],
            "mode_true": (mw.get("true") or [None])[0],
            "mem": _stat(r, "memorized_fraction")[0], "mem_se": _stat(r, "memorized_fraction")[1],
            "fresh": _stat(r, "memorized_fraction_fresh")[0], "fresh_se": _stat(r, "memorized_fraction_fresh")[1]})
    return cells


def _f(v, spec=".3g") -> str:
    return "—" if v is None else format(v, spec)


def _pm(mean, se) -> str:
    return "—" if mean is None else f"{mean:.3g} ± {_f(se, '.2g')}"


def _scores(cells) -> list[str]:
    return sorted({c["score"] for c in cells}, key=lambda s: (SCORE_ORDER.index(s) if s in SCORE_ORDER else 9, s))


def beats(a: dict, b: dict) -> bool:
    """a's true error below b's by more than BEATS_SE s.e. of the difference."""
    se = math.hypot(a["ot_se"] or 0.0, b["ot_se"] or 0.0)
    return b["ot"] - a["ot"] > BEATS_SE * se


def stops_answers(cells) -> list[str]:
    """Per N: the Δ at which the MLP beats the linear score, and the first Δ at which |z| > STOPS_Z per score."""
    out = []
    for n in sorted({c["n"] for c in cells}):
        at = {(c["score"], c["separation"]): c for c in cells if c["n"] == n}
        seps = sorted({s for _, s in at})
        won = [s for s in seps if ("mlp", s) in at and ("linear", s) in at and beats(at["mlp", s], at["linear", s])]
        lost = [s for s in seps if ("mlp", s) in at and ("linear", s) in at and beats(at["linear", s], at["mlp", s])]
        out.append(f"* N = {n}: the MLP beats the linear score (by > {BEATS_SE:g} s.e.) at Δ = "
                   f"{', '.join(f'{s:g}' for s in won) or 'none'}; the linear score beats the MLP at Δ = "
                   f"{', '.join(f'{s:g}' for s in lost) or 'none'}.")
        for score in ("linear", "mlp"):
            zs = [(s, at[score, s]["z"]) for s in seps if (score, s) in at and at[score, s]["z"] is not None]
            off = [s for s, z in zs if abs(z) > STOPS_Z]
            out.append(f"  * {score}: the linear prediction is off by > {STOPS_Z:g} s.e. first at Δ = "
                       + (f"{off[0]:g}" if off else "none") + " (z: "
                       + ", ".join(f"Δ {s:g}: {z:+.1f}" for s, z in zs) + ").")
    return out


def stops_markdown(cells) -> str:
    out = ["Sampler: " + " / ".join(sorted({c["sampler"] for c in cells})) + ".", ""]
    for n in sorted({c["n"] for c in cells}):
        out += [f"### N = {n}", "", "| Δ | score | w2_ot_debiased | Gaussian-fit bound | linear prediction | z | "
                "w2_ot_surrogate | mode weight 1 (true) | memorized (fresh) |", "|---|---|---|---|---|---|---|---|---|"]
        rank = {s: i for i, s in enumerate(_scores(cells))}
        for c in sorted((c for c in cells if c["n"] == n), key=lambda c: (c["separation"], rank[c["score"]])):
            out.append(f"| {c['separation']:g} | {c['score']} | {_pm(c['ot'], c['ot_se'])} | "
                       f"{_pm(c['bound'], c['bound_se'])} | {_f(c['pred'])} | {_f(c['z'], '+.1f')} | "
                       f"{_pm(c['surrogate'], c['surrogate_se'])} | {_pm(c['mode'], c['mode_se'])} "
                       f"({_f(c['mode_true'], '.2g')}) | {_pm(c['mem'], c['mem_se'])} ({_f(c['fresh'], '.2g')}) |")
        out.append("")
    out += ["### answers", "", *stops_answers(cells), ""]
    return "\n".join(out)


def stops_figure(cells):
    plt = pyplot()
    ns = sorted({c["n"] for c in cells})
    fig, axes = plt.subplots(1, len(ns), figsize=(5.5 * len(ns), 4.5), sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab10")
    scores = _scores(cells)
    for ax, n in zip(axes[0], ns):
        for i, score in enumerate(scores):
            pts = sorted((c for c in cells if c["n"] == n and c["score"] == score), key=lambda c: c["separation"])
            if pts:
                ax.errorbar([c["separation"] for c in pts], [c["ot"] for c in pts],
                            yerr=[2 * (c["ot_se"] or 0) for c in pts], fmt="-" + "osD^v"[i % 5], color=cmap(i),
                            mfc="none", capsize=3, label=score)
        # the prediction and the surrogate from one score's runs (the linear one's when present)
        ref = {}
        for c in sorted(cells, key=lambda c: (c["separation"], c["score"] != "linear")):
            if c["n"] == n and c["pred"] is not None:
                ref.setdefault(c["separation"], c)
        if ref:
            ax.plot(list(ref), [c["pred"] for c in ref.values()], "--", color="k", lw=1.2,
                    label="linear prediction (surrogate)")
            ax.plot(list(ref), [c["surrogate"] for c in ref.values()], ":", color="0.4", lw=1.2,
                    label="w2_ot_surrogate (a perfect linear score)")
        ax.set(xlabel="separation Δ (in σ_c)", title=f"N = {n}")
        ax.set_yscale("symlog", linthresh=1e-3)     # w2_ot_debiased may be < 0 within its s.e.
        ax.grid(True, which="both", alpha=0.25)
    axes[0][0].set_ylabel("w2_ot_debiased (± 2 s.e.)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("where the theory stops: " + " / ".join(sorted({c["sampler"] for c in cells})), fontsize=10)
    fig.tight_layout()
    return fig


def _write(sweep_dir: Path, stem: str, md: str, fig) -> list[Path]:
    plt = pyplot()
    md_path, png_path = sweep_dir / f"{stem}.md", sweep_dir / f"{stem}.png"
    write_text_atomic(md_path, md)
    savefig_atomic(fig, png_path, dpi=120)
    plt.close(fig)
    print(md[md.index("### answers"):])
    return [png_path, md_path]


def write_stops_report(sweep_dir) -> list[Path]:
    """Writes report_where_theory_stops.md and .png, prints the answers; returns the paths."""
    cells = [c for c in mixture_cells(sweep_dir) if not math.isnan(c["separation"])]
    if not cells:
        return []
    return _write(Path(sweep_dir), "report_where_theory_stops", stops_markdown(cells), stops_figure(cells))


def onset(curve: list[dict]) -> tuple:
    """(the first steps with memorized_fraction − fresh > ONSET_SE s.e., the log-interpolated steps at which
    it crosses 1/2); None where the curve never does."""
    first = next((c["steps"] for c in curve if c["mem"] - c["fresh"]
                  > ONSET_SE * math.hypot(c["mem_se"] or 0.0, c["fresh_se"] or 0.0)), None)
    half = None
    for a, b in zip(curve, curve[1:]):
        if a["mem"] < 0.5 <= b["mem"]:
            u = (0.5 - a["mem"]) / (b["mem"] - a["mem"])
            half = math.exp(math.log(a["steps"]) + u * (math.log(b["steps"]) - math.log(a["steps"])))
            break
    if curve and curve[0]["mem"] >= 0.5:
        half = curve[0]["steps"]
    return first, half


def memorization_markdown(curves: dict, limits: dict) -> str:
    out = ["| N | steps | memorized_fraction | memorized_fraction_fresh | w2_ot_debiased |", "|---|---|---|---|---|"]
    for n, curve in curves.items():
        out += [f"| {n} | {c['steps']} | {_pm(c['mem'], c['mem_se'])} | {_pm(c['fresh'], c['fresh_se'])} | "
                f"{_pm(c['ot'], c['ot_se'])} |" for c in curve]
    out += ["", "### answers", "", "| N | onset (steps) | ½ memorised at (steps) | empirical score (the limit) |",
            "|---|---|---|---|"]
    found = []
    for n, curve in curves.items():
        first, half = onset(curve)
        found.append((n, first))
        lim, last = limits.get(n), curve[-1]["steps"]
        out.append(f"| {n} | {first if first is not None else f'none ≤ {last}'} | "
                   f"{_f(half, '.3g') if half is not None else 'none'} | {_pm(*lim) if lim else '—'} |")
    have = [(n, s) for n, s in found if s is not None]
    pairs = list(zip(have, have[1:]))
    trend = ("grows" if all(a[1] < b[1] for a, b in pairs) else "does not decrease"
             if all(a[1] <= b[1] for a, b in pairs) else "does not grow monotonically")
    out += ["", (f"Onset found for N = {', '.join(str(n) for n, _ in have)}: it {trend} with N (to within the "
                 "grid's step between training-step values)."
                 if have else "The MLP does not memorise (above the chance level) within this budget at any N.")
            + (" Onset / N: " + ", ".join(f"{s / n:.3g}" for n, s in have) + "." if have else ""), ""]
    return "\n".join(out)


def memorization_figure(curves: dict, limits: dict):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    cmap = plt.get_cmap("tab10")
    for i, (n, curve) in enumerate(curves.items()):
        xs = [c["steps"] for c in curve]
        ax.errorbar(xs, [c["mem"] for c in curve], yerr=[2 * (c["mem_se"] or 0) for c in curve], fmt="-o",
                    color=cmap(i), mfc="none", capsize=3, label=f"MLP, N = {n}")
        ax.plot(xs, [c["fresh"] for c in curve], ":", color=cmap(i), lw=1, label=f"chance (fresh data), N = {n}")
        if n in limits:
            ax.axhline(limits[n][0], ls="--", color=cmap(i), lw=1, label=f"empirical score, N = {n}")
    ax.set(xscale="log", xlabel="training steps", ylabel="memorized_fraction (± 2 s.e.)", ylim=(-0.02, 1.02))
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def write_memorization_report(sweep_dir) -> list[Path]:
    """Writes report_memorization.md and .png, prints the onsets; returns the paths."""
    cells = [c for c in mixture_cells(sweep_dir) if c["mem"] is not None]
    limits = {c["n"]: (c["mem"], c["mem_se"]) for c in cells if c["score"] == "empirical"}
    curves = {}
    for c in sorted((c for c in cells if c["score"] != "empirical"), key=lambda c: (c["n"], c["steps"])):
        curves.setdefault(c["n"], []).append(c)
    if not curves:
        return []
    return _write(Path(sweep_dir), "report_memorization", memorization_markdown(curves, limits),
                  memorization_figure(curves, limits))
