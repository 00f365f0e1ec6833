"""The run's comparison as TensorBoard shows it at a glance: measured W2² ± 2 s.e. against the prediction
stacked term by term, as an image (`eval/comparison`, also `<run>/figures/eval_comparison.png`), as a
Markdown table (Text tab, `eval/comparison`) and as a Custom Scalars margin chart (the HParams tab:
`gsm.pipeline.record.log_hparams`).
docs/tensorboard.md says what each tab shows."""
from __future__ import annotations

import math

from gsm.pipeline.record import TERM_SOURCE, term_shares
from gsm.theory.regime import verdict_lines

CATEGORY = "W2² (squared Bures–Wasserstein)"
# (measured key, predicted key, what the measured number is): each is one panel, one table, one chart
PAIRS = (("w2_exact", "w2_predicted", "the sampler's exact law"),
         ("w2_empirical", "w2_predicted_empirical", "M particles (prediction + 1/M term)"),
         ("w2_empirical_debiased", "w2_predicted_linear", "neural score's particles, debiased"))


def z_score(measured: dict, predicted: float | None) -> float | None:
    """(measured − predicted) / s.e. of the measured mean; None without a prediction or an s.e."""
    if predicted is None or not measured.get("stderr"):
        return None
    return (measured["mean"] - predicted) / measured["stderr"]


def comparisons(results: dict) -> list[dict]:
    """One dict per measured W2² that has its prediction: label, measured (mean, stderr, n), predicted,
    z and parts [(term, value, share of predicted, what it is)], the terms of `term_shares` (plus the
    1/M particles term for the particles' W2²); a prediction without terms (neural) is one part."""
    out = []
    terms = results.get("prediction_terms") or {}
    for mkey, pkey, what in PAIRS:
        measured, predicted = results.get(mkey), results.get(pkey)
        if not isinstance(measured, dict) or measured.get("mean") is None or predicted is None:
            continue
        parts = [(k, v, share, TERM_SOURCE.get(k, "").strip()) for k, v, share in term_shares(results)]
        if pkey == "w2_predicted_empirical" and terms.get("particles"):
            parts = [(k, v, v / predicted, why) for k, v, _, why in parts]
            parts.append(("particles", terms["particles"], terms["particles"] / predicted, "1/M: M particles"))
        if not parts:
            parts = [(pkey, predicted, 1.0, "a linear score's prediction at the same (N, σ, τ, γ)")]
        out.append({"measured_key": mkey, "predicted_key": pkey, "what": what, "measured": measured,
                    "predicted": predicted, "z": z_score(measured, predicted), "parts": parts})
    return out


def markdown_table(results: dict, rows: list[dict]) -> str:
    """The Text tab's comparison: per measured W2², term | predicted | share, the total, the measured
    mean ± 2 s.e. with z; then the verdict lines."""
    blocks = []
    for c in rows:
        m = c["measured"]
        lines = [f"**{c['measured_key']}** ({c['what']}) against **{c['predicted_key']}**", "",
                 "| term | predicted W2² | share | source |", "|:--|--:|--:|:--|"]
        lines += [f"| {k} | {v:.4g} | {100 * share:.0f} % | {why} |" for k, v, share, why in c["parts"]]
        lines.append(f"| **predicted** ({c['predicted_key']}) | **{c['predicted']:.4g}** | 100 % | |")
        se = "n/a" if m.get("stderr") is None else f"{2 * m['stderr']:.2g}"
        z = "" if c["z"] is None else f"z = {c['z']:+.2f}"
        lines.append(f"| **measured** ({c['measured_key']}, {m['n']} replicates) | **{m['mean']:.4g} ± {se}** "
                     f"(2 s.e.) | {z} | |")
        blocks.append("\n".join(lines))
    verdict = verdict_lines(results.get("regime")) or [f"regime: no verdict (status {results.get('status')})"]
    return "\n\n".join([*blocks, "  \n".join(verdict)])


def log_comparison(writer, results: dict, step: int) -> None:
    """eval/comparison as image and text, eval/w2_exact_z, and the Custom Scalars margin charts."""
    from gsm.figures import comparison_figure, log_figure     # matplotlib only when a run logs

    rows = comparisons(results)
    writer.add_text("eval/comparison", markdown_table(results, rows), step)
    if not rows:
        return
    for c in rows:
        if c["z"] is not None:
            writer.add_scalar(f"eval/{c['measured_key']}_z", c["z"], step)
    log_figure(writer, "eval/comparison", comparison_figure(rows), step)
    log_margin_charts(writer, rows, step)


def log_margin_charts(writer, rows: list[dict], step: int) -> None:
    """Custom Scalars: per pair, one chart with the measured mean and its ± 2 s.e. band and the prediction
    as a line of its own. Their `compare/` scalars are level lines from step 0 to the run's last step:
    W2² is measured once, at the end, and a lone point at that step has no band to see; a level across the
    training axis reads as "the result of this run" (the measurement at its step is eval/<key>)."""
    from torch.utils.tensorboard.summary import custom_scalars

    from tensorboard.plugins.custom_scalar import layout_pb2

    charts = {}
    for c in rows:
        m, se = c["measured"], 2 * (c["measured"].get("stderr") or 0.0)
        tag, pred = f"compare/{c['measured_key']}", f"compare/{c['predicted_key']}"
        for s in (0, max(int(step), 1)):
            for t, v in ((tag, m["mean"]), (tag + "_lower", m["mean"] - se), (tag + "_upper", m["mean"] + se),
                         (pred, c["predicted"])):
                writer.add_scalar(t, v, s)
        charts[f"{c['measured_key']} ± 2 s.e. (band) vs {c['predicted_key']} (line)"] = \
            ["Margin", [tag, tag + "_lower", tag + "_upper"]]
    summary = custom_scalars({CATEGORY: charts})
    layout = layout_pb2.Layout.FromString(summary.value[0].tensor.string_val[0])
    for chart, c in zip(layout.category[0].chart, rows):     # the prediction: a second series, zero width
        pred = f"compare/{c['predicted_key']}"
        chart.margin.series.add(value=pred, lower=pred, upper=pred)
    summary.value[0].tensor.string_val[0] = layout.SerializeToString()
    writer.file_writer.add_summary(summary)


__all__ = ["comparisons", "markdown_table", "log_comparison", "log_margin_charts", "z_score"]
