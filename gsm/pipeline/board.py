"""The run's comparison as TensorBoard shows it at a glance: measured W2² ± 2 s.e. against the prediction
stacked term by term, as images (`eval/comparison`: the law's W2²; `eval/comparison_w2_empirical`: the
particles'; also `<run>/figures/eval_comparison*.png`), as a Markdown table (Text tab, `eval/comparison`),
as Custom Scalars margin charts, and in the HParams tab (the flattened config with the W2² metrics, z and
the verdict). docs/tensorboard.md says what each tab shows."""
from __future__ import annotations

import math
from pathlib import Path

from gsm.pipeline.terms import TERM_SOURCE, term_shares, z_score
from gsm.theory.regime import verdict_lines

CATEGORY = "W2² (squared Bures–Wasserstein)"
# (measured key, predicted key, what the measured number is): each is one panel, one table, one chart
PAIRS = (("w2_exact", "w2_predicted", "the sampler's exact law"),
         ("w2_empirical", "w2_predicted_empirical", "M particles (prediction + 1/M term)"),
         ("w2_empirical_debiased", "w2_predicted_linear", "neural score's particles, debiased"))


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
                    "predicted": predicted, "z": z_score(measured, predicted, results.get(pkey + "_error")),
                    "parts": parts})
    return out


def markdown_table(results: dict, rows: list[dict]) -> str:
    """The Text tab's comparison: the verdict lines, then per measured W2² term | predicted | share, the
    total, and the measured mean ± 2 s.e. with z."""
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
    return "\n\n".join(["  \n".join(verdict), *blocks])


def log_comparison(writer, results: dict, step: int, image: bool = True) -> None:
    """eval/comparison as image (unless image=False: a run that draws no figures, `figures=false`) and
    text, eval/w2_exact_z, and the Custom Scalars margin charts."""

    rows = comparisons(results)
    writer.add_text("eval/comparison", markdown_table(results, rows), step)
    if not rows:
        return
    for c in rows:
        if c["z"] is not None:
            writer.add_scalar(f"eval/{c['measured_key']}_z", c["z"], step)
    for i, c in enumerate(rows if image else []):     # one image each: a card is ~350 px wide
        from gsm.figures import comparison_figure, log_figure     # matplotlib only when a figure is drawn
        tag = "eval/comparison" if i == 0 else f"eval/comparison_{c['measured_key']}"
        log_figure(writer, tag, comparison_figure(c), step, title_size=9.5)
    log_margin_charts(writer, rows, step)


def log_margin_charts(writer, rows: list[dict], step: int) -> None:
    """Custom Scalars: per pair, a margin chart whose band is the measured mean ± 2 s.e. and whose line is
    the prediction, so "is the line inside the band?" is the chart (a second, zero-width series for the
    prediction would be clearer, but TensorBoard 2.21 then drops all bands but one run's in a sweep). Its
    `margin/` scalars are level lines from step 0 to the run's last step: W2² is measured once, at the
    end, and a lone point has no band to see; a level across the training axis reads as "the result of
    this run" (the measurement at its step is eval/<key>)."""
    charts = {}
    for c in rows:
        m, se = c["measured"], 2 * (c["measured"].get("stderr") or 0.0)
        tag, pred = f"margin/{c['measured_key']}", f"margin/{c['predicted_key']}"
        for s in (0, max(int(step), 1)):
            for t, v in ((tag + "_lower", m["mean"] - se), (tag + "_upper", m["mean"] + se), (pred, c["predicted"])):
                writer.add_scalar(t, v, s)
        charts[f"{c['predicted_key']} (line) in {c['measured_key']} ± 2 s.e. (band)?"] = \
            ["Margin", [pred, tag + "_lower", tag + "_upper"]]
    writer.add_custom_scalars({CATEGORY: charts})


# the HParams tab's metrics, scalars a run writes (the plugin shows each one's last value): W2² measured and
# predicted, z = (w2_exact − w2_predicted)/√(s.e.² + e²) with both error bars, the verdict (1 = in regime)
HPARAM_METRICS = ("eval/w2_exact", "eval/w2_predicted", "eval/w2_exact_z", "eval/w2_empirical",
                  "eval/w2_predicted_empirical", "eval/w2_empirical_debiased", "eval/w2_predicted_linear", "regime/ok")


def log_hparams(writer, results: dict) -> None:
    """The HParams tab: the flattened config (data.n, train.tau, ...) as hyperparameters and the
    HPARAM_METRICS the run has as metrics, written into the run's own event file (no sub-run folder: a
    sweep's table has one row per run, named by its folder). A run with no eval/ scalars (diverged) writes
    its regime/ok = 0 here."""
    from torch.utils.tensorboard.summary import hparams

    if results.get("regime") and results["status"] != "ok":
        writer.add_scalar("regime/ok", float(results["regime"]["ok"]), 0)
    config = {k: v for k, v in flat_config(results["config"]).items() if v is not None}
    experiment, session_start, session_end = hparams(config, dict.fromkeys(hparam_metrics(results), 0.0))
    typed_first(experiment, typed_keys(Path(writer.log_dir).parent))
    for summary in (experiment, session_start, session_end):
        writer.file_writer.add_summary(summary)


def typed_keys(run_dir: Path) -> set[str]:
    """The config keys typed on the command line (Hydra's <run>/.hydra/overrides.yaml; none without it).
    A group override (sampler=ddpm) names its group."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return set()
    return {str(o).lstrip("+~").split("=", 1)[0] for o in OmegaConf.load(path)}


def typed_first(experiment, typed: set[str]) -> None:
    """Marks the hyperparameters under a typed key as `differs` in the HParams experiment summary: the
    plugin lists them first, and its table shows the first five, so a sweep's table opens on its swept keys."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    meta = experiment.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(meta.content)
    for info in data.experiment.hparam_infos:
        info.differs = any(info.name == k or info.name.startswith(k + ".") for k in typed)
    meta.content = data.SerializeToString()


def hparam_metrics(results: dict) -> list[str]:
    """The HPARAM_METRICS this run writes: regime/ok, eval/<key> for its numbers, z with an s.e."""
    def written(tag):
        if tag == "eval/w2_exact_z":
            return results["status"] == "ok" and bool((results.get("w2_exact") or {}).get("stderr"))
        return tag == "regime/ok" or (results["status"] == "ok" and results.get(tag[5:]) is not None)
    return [tag for tag in HPARAM_METRICS if written(tag)]



def flat_config(d: dict, prefix: str = "") -> dict:
    """{'data.n': 400, ...}: nested config keys joined by dots; values other than bool, int, float, str as str."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        else:
            out[key] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


__all__ = ["comparisons", "markdown_table", "log_comparison", "log_margin_charts", "log_hparams", "flat_config"]
