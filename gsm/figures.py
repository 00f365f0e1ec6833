"""A run's figures and images: to TensorBoard (images tab) and as PNG files in the run directory,
`<run>/figures/<tag with / → _>.png`, next to results.json; plus readable ticks on log axes."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from gsm.io import atomic_path

_F64 = torch.float64


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on a cluster node), imported when a figure is drawn:
    a run that draws none does not pay its 0.5 s of import."""
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


def log_figure(writer, tag: str, fig, step: int) -> None:
    """The matplotlib figure as image `tag` in TensorBoard and as its PNG file; closes it. Drawn once
    (drawing is most of the cost): the PNG's pixels are what TensorBoard gets, as add_figure would."""
    from PIL import Image

    png = io.BytesIO()
    fig.savefig(png, format="png")
    pyplot().close(fig)
    with atomic_path(figure_path(writer, tag)) as tmp:
        tmp.write_bytes(png.getvalue())
    writer.add_image(tag, np.asarray(Image.open(png).convert("RGB")), step, dataformats="HWC")


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
    Eigen-indices i, j = 1 … d are sorted by decreasing λ."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    from gsm.figures import log_ticks

    lam = prediction["eigenvalues"]
    order = torch.argsort(lam, descending=True)
    d = lam.numel()
    fig, axes = pyplot().subplots(1, 3, figsize=(12, 3.6))
    for ax, key, title in ((axes[0], "kernel_n", "K_N(λ_i, λ_j)  (1/N term)"),
                           (axes[1], "kernel_tau", "K_τ(λ_i, λ_j)  (τ term)")):
        K = prediction[key][order][:, order]
        im = ax.imshow(K.numpy(), cmap="viridis", interpolation="nearest", extent=(0.5, d + 0.5, d + 0.5, 0.5))
        ax.set(title=title, xlabel="j (λ_j sorted decreasingly)", ylabel="i (λ_i sorted decreasingly)")
        for axis in (ax.xaxis, ax.yaxis):     # indices from 1, as in spectrum/target_vs_learned
            axis.set_major_locator(FixedLocator(range(1, d + 1)) if d <= 10 else MaxNLocator(6, integer=True))
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[2]
    ax.loglog(lam[order].numpy(), prediction["bias_per_eigenvalue"][order].numpy().clip(1e-300), "o-", ms=3)
    ax.set(title="bias (√λ_i − √c_i)²  [(a)+(d)]", xlabel="λ_i", ylabel="W2² contribution")
    log_ticks(ax, "x")
    log_ticks(ax, "y")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ figures
