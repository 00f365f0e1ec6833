"""A run's figures and images: to TensorBoard (images tab) and as PNG files in the run directory,
`<run>/figures/<tag with / → _>.png`, next to results.json; plus readable ticks on log axes."""
from __future__ import annotations

import io
import math
import re
import struct
import weakref
from pathlib import Path

import numpy as np

from gsm.io import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on a cluster node), imported when a figure is drawn:
    a run that draws none does not pay its 0.5 s of import. This module imports no torch, so that gsm-report
    draws with it too."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def figure_path(writer, tag: str) -> Path:
    """<run>/figures/<tag>.png ('/' → '_'). The run dir is the parent of the writer's log_dir (<run>/tb),
    so the pipelines need not pass it along."""
    folder = Path(writer.log_dir).parent / "figures"
    folder.mkdir(exist_ok=True)
    return folder / (tag.replace("/", "_") + ".png")


# the run title of each writer's figures (`set_run_title`): the figures are drawn by the backends and by the
# samplers' own log hooks, which all get the writer, not the results
_RUN_TITLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def set_run_title(writer, title: str) -> None:
    """Every figure logged through `writer` from now on carries `title` (the run's parameters and W2²)."""
    _RUN_TITLES[writer] = title


# writers of runs with figures=false (`set_figures`): a sampler's own log hook draws through the same writer
_NO_FIGURES: "weakref.WeakSet" = weakref.WeakSet()


def set_figures(writer, drawn: bool) -> None:
    """Whether figures logged through `writer` are drawn (the run's `figures` key); numbers are logged either way."""
    (_NO_FIGURES.discard if drawn else _NO_FIGURES.add)(writer)


def figures_drawn(writer) -> bool:
    """False for a writer of a run with figures=false (`set_figures`): draw nothing for it."""
    return writer not in _NO_FIGURES


def run_title(results: dict) -> str:
    """Two lines naming the run: sampler, score, d, N, then measured and predicted W2² (squared)."""
    cfg = results.get("config", {})
    data, train, model = cfg.get("data", {}), cfg.get("train", {}), cfg.get("model", {})
    sampler = str(cfg.get("sampler", {}).get("_target_", "?")).rsplit(".", 1)[-1]
    if cfg.get("sampler", {}).get("scheme"):
        sampler += f" ({cfg['sampler']['scheme']})"
    score = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(model.get("_target_", "?")).rsplit(".", 1)[-1]).lower()
    if "oracle" in score:
        score = "exact score (oracle)"
    else:
        score += ", exact DSM minimiser" if train.get("solver") == "exact" else f", DSM-SGD τ = {train.get('tau')}"
    d = results.get("texture", results.get("dataset", {})).get("d", data.get("dim"))
    head = f"{sampler} · {score} · d = {d} · N = {data.get('n')}"
    measured = results.get("w2_exact") or results.get("w2_empirical_debiased") or {}
    predicted = results.get("w2_predicted", results.get("w2_predicted_linear"))
    if measured.get("mean") is None:
        return head
    se = "" if measured.get("stderr") is None else f" ± {2 * measured['stderr']:.2g} (2 s.e.)"
    return head + f"\nW2² measured {measured['mean']:.4g}{se}" + ("" if predicted is None else f", predicted {predicted:.4g}")


def log_figure(writer, tag: str, fig, step: int, title_size: float = 8) -> None:
    """The matplotlib figure as image `tag` in TensorBoard and as its PNG file; closes it. Drawn and
    encoded once: the PNG file's bytes are what TensorBoard gets (`add_png`).
    The run's title (`set_run_title`) goes on top, in `title_size` points."""
    if not figures_drawn(writer):      # figures=false: a user sampler's hook may still have drawn one
        pyplot().close(fig)
        return
    title = _RUN_TITLES.get(writer)
    if title:
        fig.suptitle(title, fontsize=title_size)
        if fig.get_layout_engine() is None:     # gsm's figures have an engine (tight, or fixed margins)
            fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    pyplot().close(fig)
    with atomic_path(figure_path(writer, tag)) as tmp:
        tmp.write_bytes(png.getvalue())
    add_png(writer, tag, png.getvalue(), step)


def add_png(writer, tag: str, png: bytes, step: int) -> None:
    """An encoded PNG as TensorBoard image `tag`, its bytes as they are: `add_image` takes an array, which
    it resizes and encodes again (45 ms for a 1300 × 480 figure). Through the writer's `add_summary` where
    it has one (gsm's run writer, which defers signals around it), else its file writer."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    width, height = struct.unpack(">II", png[16:24])      # the IHDR chunk, after the 8-byte signature
    image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)   # RGBA
    summary = Summary(value=[Summary.Value(tag=tag, image=image)])
    if hasattr(writer, "add_summary"):
        writer.add_summary(summary, step)
    else:
        writer.file_writer.add_summary(summary, step)


def log_image(writer, tag: str, image, step: int) -> None:
    """A grey-level image (H, W) with values in [0, 1], in TensorBoard and as its PNG file."""
    writer.add_image(tag, image, step, dataformats="HW")
    with atomic_path(figure_path(writer, tag)) as tmp:
        pyplot().imsave(tmp, image.float().numpy(), cmap="gray", vmin=0.0, vmax=1.0, format="png")


def log_ticks(ax, which: str = "y") -> None:
    """Labels of a log axis that do not overlap: one per decade over ≥ 2 decades, else 1-2-5 (or, below
    half a decade, evenly spaced) values in plain notation; no minor-tick labels. Call after plotting."""
    from matplotlib import ticker
    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    decades = math.log10(hi) - math.log10(lo) if 0 < lo < hi < math.inf else math.inf   # hi/lo can overflow
    axis.set_minor_formatter(ticker.NullFormatter())
    if decades >= 2:
        return
    axis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)) if decades >= 0.5 else ticker.MaxNLocator(5))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))


def index_ticks(ax, d: int) -> None:
    """A log-scaled x axis of indices 1, 2, …, d: a tick at each index up to d = 8, else at the powers
    of 2, labelled as integers."""
    from matplotlib import ticker
    ax.set_xscale("log", base=2)
    if d <= 8:
        ax.set_xticks(range(1, d + 1))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


# ----------------------------------------------------------------------------------------------
# figure

def plot_kernels(prediction: dict):
    """Heatmaps of K_N and K_τ over the spectrum and the bias per eigenvalue (a matplotlib Figure).
    Eigen-indices i, j = 1 … d are sorted by decreasing λ. Fixed margins, not the tight layout: its
    measuring pass costs more than drawing this figure (0.25 of 0.6 s), and the panels' text is fixed."""
    from matplotlib.layout_engine import PlaceHolderLayoutEngine
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    lam = prediction["eigenvalues"]
    order = lam.argsort(descending=True)
    d = lam.numel()
    fig, axes = pyplot().subplots(1, 3, figsize=(13, 4.8))
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.12, top=0.76, wspace=0.42)   # 3 title lines + the run title
    gen, opt = prediction.get("generalization", 0.0), prediction.get("optimization", 0.0)
    for ax, key, title in ((axes[0], "kernel_n", f"1/N term (score fitted on N samples) = {gen:.3g}\n"
                                                 "its share from each eigen-pair (i, j): K_N(λ_i, λ_j)"),
                           (axes[1], "kernel_tau", f"τ term (SGD fluctuations) = {opt:.3g}\n"
                                                   "its share from each eigen-pair (i, j): K_τ(λ_i, λ_j)")):
        K = prediction[key][order][:, order]
        im = ax.imshow(K.numpy(), cmap="viridis", interpolation="nearest", extent=(0.5, d + 0.5, d + 0.5, 0.5))
        ax.set_title(title, fontsize=9)
        ax.set(xlabel="j (λ_j sorted decreasingly)", ylabel="i (λ_i sorted decreasingly)")
        for axis in (ax.xaxis, ax.yaxis):     # indices from 1, as in spectrum/target_vs_learned
            axis.set_major_locator(FixedLocator(range(1, d + 1)) if d <= 10 else MaxNLocator(6, integer=True))
        bar = fig.colorbar(im, ax=ax, fraction=0.046)
        bar.formatter = FuncFormatter(lambda v, _: f"{v:.2g}")   # no "1e-5" offset text over the title
    ax = axes[2]
    ax.loglog(lam[order].numpy(), prediction["bias_per_eigenvalue"][order].numpy().clip(1e-300), "o-", ms=3)
    bias = float(prediction["bias_per_eigenvalue"].sum())
    ax.set_title(f"bias (DSM noise σ + sampler steps) = {bias:.3g}\nper eigenvalue: (√λ_i − √c_i)²,\n"
                 "c_i the sampler's variance with the exact score", fontsize=9)
    ax.set(xlabel="λ_i", ylabel="W2² contribution")
    log_ticks(ax, "x")
    log_ticks(ax, "y")
    fig.set_layout_engine(PlaceHolderLayoutEngine(adjust_compatible=True, colorbar_gridspec=True))  # log_figure: keep the margins
    return fig


# ------------------------------------------------------------------------------------------ figures


# ----------------------------------------------------------------------------------------------
# the run's comparison (gsm.pipeline.board): measured W2² against the prediction term by term

TERM_COLORS = {"noise": "#4C72B0", "discretization": "#64B5CD", "bias": "#4C72B0", "mixing": "#8172B2",
               "t_min": "#8172B2", "truncation": "#8172B2", "initialization": "#937860",
               "transient": "#CCB974", "generalization": "#DD8452", "optimization": "#55A868",
               "particles": "#C44E52", "other": "#BBBBBB"}


def comparison_figure(c: dict):
    """A comparison (`gsm.pipeline.board.comparisons`) drawn to be read in a TensorBoard card (Time
    Series fits images to a short card, Images shows them at their size; hence one comparison per figure,
    wide and short, large type): the prediction as a horizontal bar stacked term by term, each segment
    labelled with its term, value and share (segments too thin for a label are in the legend); under it
    the measured mean with its ± 2 s.e. error bar; the predicted total as a dashed level across both, so
    that "does the dashed line cross the error bar?" is read at a glance."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    low = high = 0.0
    for term, value, share, why in c["parts"]:
        base = high if value >= 0 else low
        labelled = abs(share) >= LABELLED_SHARE
        ax.barh(1, value, 0.7, left=base, color=TERM_COLORS.get(term, "#999999"), edgecolor="white",
                label=None if labelled else f"{term} {value:.2g} ({100 * share:.0f} %)")
        if labelled:
            ax.text(base + value / 2, 1, f"{term}\n{value:.3g}\n{100 * share:.0f} %", ha="center", va="center",
                    fontsize=9.5, color="white", fontweight="bold")
        high, low = (high + value, low) if value >= 0 else (high, low + value)
    m = c["measured"]
    err = 2 * (m.get("stderr") or 0.0)
    ax.errorbar(m["mean"], 0, xerr=err, fmt="D", color="black", ms=9, capsize=12, elinewidth=2.5, capthick=2.5)
    ax.axvline(c["predicted"], color="black", ls="--", lw=1)
    se = "" if m.get("stderr") is None else f" ± {err:.2g}"
    ax.annotate(f"{m['mean']:.4g}{se}", (m["mean"] + err, 0), xytext=(8, 0), textcoords="offset points",
                ha="left", va="center", fontsize=12)
    ax.annotate(f"{c['predicted']:.4g}", (high, 1), xytext=(6, 0), textcoords="offset points", ha="left",
                va="center", fontsize=12)
    ax.set_yticks([1, 0], ["predicted", "measured\n± 2 s.e."], fontsize=12)
    thin = len(ax.get_legend_handles_labels()[0])
    ax.set_ylim(-0.6, 1.55 + 0.2 * math.ceil(thin / 3))      # the legend of thin terms above the bar
    ax.set_xlim(min(0.0, low * 1.15), 1.25 * max(high, m["mean"] + err))     # room for the numbers on the right
    z = "" if c["z"] is None else f"   z = {c['z']:+.2f}"
    ax.set_title(f"{c['measured_key']} vs {c['predicted_key']}{z}\n{c['what']}, {m['n']} replicates", fontsize=11)
    ax.set_xlabel("W2² (squared Bures–Wasserstein)", fontsize=11)
    ax.tick_params(axis="x", labelsize=10)
    if thin:
        ax.legend(loc="upper left", ncol=3, fontsize=9, frameon=False, borderaxespad=0.2, handlelength=1.2)
    fig.set_layout_engine("tight")     # laid out when drawn, once, with the run title log_figure adds
    return fig


LABELLED_SHARE = 0.1     # thinner segments are too thin for their label (the legend has them)
