"""A run's figures and images: to TensorBoard (images tab) and as PNG files in the run directory,
`<run>/figures/<tag with / → _>.png`, next to results.json; plus readable ticks on log axes."""
from __future__ import annotations

import io
import math
import re
import weakref
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import ticker

from gsm.io import atomic_path

_F64 = torch.float64


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
    d = results.get("texture", {}).get("d", data.get("dim"))
    head = f"{sampler} · {score} · d = {d} · N = {data.get('n')}"
    measured = results.get("w2_exact") or results.get("w2_empirical_debiased") or {}
    predicted = results.get("w2_predicted", results.get("w2_predicted_linear"))
    if measured.get("mean") is None:
        return head
    se = "" if measured.get("stderr") is None else f" ± {2 * measured['stderr']:.2g} (2 s.e.)"
    return head + f"\nW2² measured {measured['mean']:.4g}{se}" + ("" if predicted is None else f", predicted {predicted:.4g}")


def log_figure(writer, tag: str, fig, step: int) -> None:
    """The matplotlib figure as image `tag` in TensorBoard and as its PNG file; closes it. Drawn once
    (drawing is most of the cost): the PNG's pixels are what TensorBoard gets, as add_figure would.
    The run's title (`set_run_title`) goes on top."""
    from PIL import Image

    title = _RUN_TITLES.get(writer)
    if title:
        fig.suptitle(title, fontsize=8)
        fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    with atomic_path(figure_path(writer, tag)) as tmp:
        tmp.write_bytes(png.getvalue())
    writer.add_image(tag, np.asarray(Image.open(png).convert("RGB")), step, dataformats="HWC")


def log_image(writer, tag: str, image, step: int) -> None:
    """A grey-level image (H, W) with values in [0, 1], in TensorBoard and as its PNG file."""
    writer.add_image(tag, image, step, dataformats="HW")
    with atomic_path(figure_path(writer, tag)) as tmp:
        plt.imsave(tmp, image.float().numpy(), cmap="gray", vmin=0.0, vmax=1.0, format="png")


def log_ticks(ax, which: str = "y") -> None:
    """Labels of a log axis that do not overlap: one per decade over ≥ 2 decades, else 1-2-5 (or, below
    half a decade, evenly spaced) values in plain notation; no minor-tick labels. Call after plotting."""
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
    ax.set_xscale("log", base=2)
    if d <= 8:
        ax.set_xticks(range(1, d + 1))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


# ----------------------------------------------------------------------------------------------
# figure

def plot_kernels(prediction: dict):
    """Heatmaps of K_N and K_τ over the spectrum and the bias per eigenvalue (a matplotlib Figure).
    Eigen-indices i, j = 1 … d are sorted by decreasing λ."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, MaxNLocator

    from gsm.figures import log_ticks

    lam = prediction["eigenvalues"]
    order = torch.argsort(lam, descending=True)
    d = lam.numel()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
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
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[2]
    ax.loglog(lam[order].numpy(), prediction["bias_per_eigenvalue"][order].numpy().clip(1e-300), "o-", ms=3)
    bias = float(prediction["bias_per_eigenvalue"].sum())
    ax.set_title(f"bias (DSM noise σ + sampler steps) = {bias:.3g}\nper eigenvalue: (√λ_i − √c_i)²,\n"
                 "c_i the sampler's variance with the exact score", fontsize=9)
    ax.set(xlabel="λ_i", ylabel="W2² contribution")
    log_ticks(ax, "x")
    log_ticks(ax, "y")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ figures


# ----------------------------------------------------------------------------------------------
# the run's comparison (gsm.pipeline.board): measured W2² against the prediction term by term

TERM_COLORS = {"noise": "#4C72B0", "discretization": "#64B5CD", "bias": "#4C72B0", "mixing": "#8172B2",
               "t_min": "#8172B2", "truncation": "#8172B2", "initialization": "#937860",
               "transient": "#CCB974", "generalization": "#DD8452", "optimization": "#55A868",
               "particles": "#C44E52", "other": "#BBBBBB"}


def comparison_figure(rows: list[dict]):
    """One panel per measured W2² (`gsm.pipeline.board.comparisons`): the prediction as a bar stacked term
    by term (each segment labelled with its share), the measured mean as a point with a ± 2 s.e. error bar
    next to it, and the predicted total as a dashed level across both, so that "is the point on the bar's
    top?" is read at a glance."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(5.4 * len(rows) + 0.6, 6.4), squeeze=False)
    for ax, c in zip(axes[0], rows):
        comparison_panel(ax, c)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8, frameon=False)   # below: tight_layout keeps it
    fig.tight_layout()
    return fig


def comparison_panel(ax, c: dict) -> None:
    """A comparison (see comparison_figure) on one axis, from 0 up."""
    low = high = 0.0
    for term, value, share, why in c["parts"]:
        base = high if value >= 0 else low
        ax.bar(0, value, 0.55, bottom=base, color=TERM_COLORS.get(term, "#999999"), edgecolor="white",
               label=f"{term}: {why}" if why else term)
        if abs(share) >= 0.06:
            ax.text(0, base + value / 2, f"{term}\n{value:.3g} ({100 * share:.0f} %)", ha="center", va="center",
                    fontsize=7.5, color="white", fontweight="bold")
        high, low = (high + value, low) if value >= 0 else (high, low + value)
    m = c["measured"]
    err = 2 * (m.get("stderr") or 0.0)
    ax.errorbar(1, m["mean"], yerr=err, fmt="D", color="black", ms=7, capsize=10, elinewidth=2, capthick=2,
                label="measured mean ± 2 s.e.")
    ax.axhline(c["predicted"], color="black", ls="--", lw=0.9)
    se = "" if m.get("stderr") is None else f"\n± {err:.2g}"
    ax.annotate(f"{m['mean']:.4g}{se}", (1, m["mean"] + err), xytext=(0, 6), textcoords="offset points",
                ha="center", va="bottom", fontsize=9)
    ax.annotate(f"{c['predicted']:.4g}", (0, high), xytext=(0, 4), textcoords="offset points", ha="center",
                va="bottom", fontsize=9)
    ax.set_xticks([0, 1], [f"predicted\n{c['predicted_key']}", f"measured\n{c['measured_key']}"])
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylim(min(0.0, low * 1.15), 1.25 * max(high, m["mean"] + err))
    z = "" if c["z"] is None else f", z = {c['z']:+.2f}"
    ax.set_title(f"{c['what']}\n{m['n']} replicates{z}", fontsize=9)
    ax.set_ylabel("W2² (squared Bures–Wasserstein)")
