"""The run's Gaussian-structure probe (eval.probe=true, `gsm.theory.probe`): at every level the sampler reads,
the explained variance of the score by the Gaussian score of each replicate's training data, and the residual
of the score's best affine fit, into results.json (`gaussian_probe`), TensorBoard and <run>/figures/."""
from __future__ import annotations

import torch

from gsm.figures import log_figure, log_ticks, pyplot
from gsm.pipeline.record import mean_stderr
from gsm.theory.probe import gaussian_structure

PROBE_SEED_OFFSET = 7919     # the probe's own generator: turning it on changes no other number of the run
DEFINITION = ("explained_variance = 1 − E‖s_net − s_G‖² / E‖s_net‖², s_G(y) = −(α²Σ̂ + s²I)⁻¹(y − αμ̂) the Gaussian "
              "score of the replicate's training data (μ̂, Σ̂: its mean and centred covariance); linear_fit_residual "
              "= the least-squares residual of s_net on [y, 1] / E‖s_net‖² (≤ 1 − explained_variance); E over "
              "y = αx + sz, x from the training data, `points` draws a level; sigma = s/α (Wang & Vastola, "
              "arXiv 2412.09726)")


def per_level(values: torch.Tensor) -> dict:
    """{mean, stderr, n} of (R, L) values over the replicates, as lists over the levels (stderr None for R = 1)."""
    stats = [mean_stderr(values[:, level]) for level in range(values.shape[1])]
    return {"mean": [s["mean"] for s in stats], "stderr": [s["stderr"] for s in stats], "n": values.shape[0]}


def record_probe(results: dict, model, x: torch.Tensor, alphas, stds, points: int, seed: int, keep) -> None:
    """results["gaussian_probe"] of the model at the levels (α_l, s_l), the training sets x (R, N, d), for the
    replicates `keep` (R,) bool."""
    params = next(iter(model.parameters()), None)
    dtype = torch.float64 if params is None else params.dtype      # a trained net runs in its training dtype
    gen = torch.Generator(x.device).manual_seed(int(seed) + PROBE_SEED_OFFSET)
    out = gaussian_structure(lambda y, level: model(y.to(dtype), level).to(torch.float64), x, alphas, stds,
                             points=points, generator=gen)
    keep = keep.cpu()
    results["gaussian_probe"] = {
        "levels": list(range(out["alphas"].numel())), "alphas": out["alphas"].tolist(),
        "noise_std": out["stds"].tolist(), "sigma": out["sigma"].tolist(),
        "explained_variance": per_level(out["explained_variance"][keep]),
        "linear_fit_residual": per_level(out["linear_fit_residual"][keep]), "points": int(points),
        "definition": DEFINITION}


def log_probe(writer, results: dict, step: int) -> None:
    """The figure probe/gaussian_structure (TensorBoard and <run>/figures/), when the run has the probe."""
    if "gaussian_probe" in results:
        log_figure(writer, "probe/gaussian_structure", probe_figure(results["gaussian_probe"]), step)


def probe_figure(probe: dict):
    """The explained variance and 1 − the affine fit's residual against σ = s/α (left), and their deficits
    1 − explained variance and the residual on a log scale (right), mean ± s.e. over the replicates."""
    plt = pyplot()
    sigma = probe["sigma"]
    fig, (ax, ax_log) = plt.subplots(1, 2, figsize=(9, 3.8))
    low = 0.0          # the left axis from 0 (or below, an explained variance can be < 0) to 1
    for key, label, color in (("explained_variance", "explained variance by the Gaussian score", "tab:blue"),
                              ("linear_fit_residual", "best affine fit", "tab:orange")):
        m = torch.tensor(probe[key]["mean"], dtype=torch.float64)
        se = torch.tensor([s or 0.0 for s in probe[key]["stderr"]], dtype=torch.float64)
        share = m if key == "explained_variance" else 1 - m       # both plotted as "share explained"
        low = min(low, float(share.min()))
        ax.errorbar(sigma, share, yerr=se, fmt="o-", ms=3, color=color, label=label)
        ax_log.errorbar(sigma, (1 - share).clamp_min(1e-16), yerr=se, fmt="o-", ms=3, color=color,
                        label=f"1 − share ({label})")
    ax.set(xscale="log", xlabel="noise level σ = s/α", ylabel="share of E‖s_net‖² explained", ylim=(low - 0.02, 1.02))
    ax_log.set(xscale="log", yscale="log", xlabel="noise level σ = s/α", ylabel="share not explained")
    log_ticks(ax_log, "y")
    ax.legend(fontsize=7, loc="lower right")      # a fixed place: "best" is slow over 1000 levels
    ax_log.legend(fontsize=7, loc="upper right")
    fig.set_layout_engine("tight")
    return fig
