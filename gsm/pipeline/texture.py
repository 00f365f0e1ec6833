"""The texture pipeline (data=texture, model=fourier_linear): `gsm.pipeline.run.run` hands over to
`run_texture` when the data config names an image. Same stages, results keys and TensorBoard tags
as the full-matrix pipeline, but every covariance is a per-frequency vector on the rfft2 half-plane,
so nothing d×d is ever formed (d = n² = 65536 for a 256×256 texture)."""
from __future__ import annotations

import time

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from gsm.figures import log_figure, log_image
from gsm.pipeline.interrupt import SummaryWriter
from gsm.theory.regime import RELAXATION_TIMES_MIN, linear_regime, relaxation_times
from gsm.scores.fourier import FourierLinearScore, dsm_optimum_fourier
from gsm.data.texture import adsn_sample, adsn_spectrum, load_texture, multiplicity, periodogram
from gsm.theory.fourier import fourier_bures_wasserstein2, fourier_prediction
from gsm.samplers.fourier import fourier_sample, sampler_unstable, sampler_variance
from gsm.training.fourier import train_fourier_dsm

_F64 = torch.float64


def run_texture(cfg: DictConfig, output_dir, checks: list) -> dict:
    """Runs one texture experiment (R replicates) for `gsm.pipeline.run.run`, which has validated cfg
    (`checks`: its warnings) and handles interruption; returns the results dict also in results.json."""
    from gsm.pipeline.run import (DIAGNOSTICS, _finite, log_w2, mean_stderr, none_left, record_divergence,
                                  recorded, resolve_device, resolve_dtype, start)

    t0 = time.time()
    out, results, warn = start(cfg, output_dir, checks)
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype)
    R, N, t = int(cfg.replicates), int(cfg.data.n), cfg.train
    u = load_texture(cfg.data.image, cfg.data.size, cfg.data.fit)
    n = u.shape[-1]
    lam = adsn_spectrum(u, cfg.data.floor)
    w = multiplicity(n)
    sampler = instantiate(cfg.sampler)
    alphas, stds = sampler.noise_levels(t.sigma)
    L = alphas.numel()
    target = cfg.model.get("_target_")
    if target not in ("gsm.scores.fourier.FourierLinearScore", FourierLinearScore):
        raise ValueError(f"data=texture needs model=fourier_linear, got model._target_={target}")
    model = instantiate(cfg.model, size=n, replicates=R, levels=L, stds=stds)
    learned = model.requires_training and t.solver == "sgd"
    model = model.to(device=device, dtype=dtype if learned else _F64)
    gen = torch.Generator(device).manual_seed(int(cfg.seed))
    results["texture"] = {"size": n, "d": n * n, "pixel_variance": float((w * lam).sum()) / n ** 2,
                          "lambda_max": float(lam.max()), "lambda_floor": float(lam.min()),
                          "floored_frequencies": int((w * (lam == lam.min())).sum())}

    writer = SummaryWriter(log_dir=str(out / "tb"))
    with recorded(writer, results, t0, out):
        # 1. data: R data sets of N ADSN samples, kept as their DFTs
        xhat = torch.fft.rfft2(adsn_sample(lam, (R, N), gen, device=device))
        # 2. score
        fit, times = {}, None
        if not model.requires_training:
            model.set_coefficients(dsm_optimum_fourier(lam.to(device), alphas, stds))
        elif t.solver == "exact":
            model.set_coefficients(dsm_optimum_fourier((xhat.abs() ** 2).mean(1) / n ** 2, alphas, stds))
        elif t.solver == "sgd":
            fit = train_fourier_dsm(model.a.data, xhat, alphas=alphas, stds=stds, tau=t.tau, batch_size=t.batch_size,
                                    steps=t.steps, generator=gen, log_every=t.log_every,
                                    callback=lambda k, loss: writer.add_scalar("train/dsm_loss", loss, k))
            times = relaxation_times(int(t.steps), t.tau, alphas, stds, float(lam.min()))
            results["relaxation_times"] = float(times.min())
            results["relaxation_times_per_level"] = times.tolist()
            if results["relaxation_times"] < RELAXATION_TIMES_MIN:
                warn(f"SGD ran {results['relaxation_times']:.2f} relaxation times (< 5): a is not stationary; the "
                     "prediction's 'transient' term accounts for it at first order only")
            if t.sampling != "with_replacement":
                warn("the Fourier trainer samples with replacement only; train.sampling is ignored")
        else:
            raise ValueError(f"train.solver must be one of sgd | exact, got {t.solver}")
        # 3. stability, exact law, particles
        a = model.coefficients()
        unstable = sampler_unstable(sampler, a).cpu()
        unstable |= record_divergence(results, fit)
        if none_left(results, unstable, warn):
            return results
        lam_d = lam.to(device)
        c = sampler_variance(sampler, a)
        M = int(sampler.particles)
        x0 = sampler.init_var ** 0.5 * torch.randn(R, M, n, n, generator=gen, device=device, dtype=dtype)
        samples = fourier_sample(sampler, model.a.detach(), x0, gen)
        # a finite but huge a can still overflow its law or its (float32) particles: counted unstable too
        unstable |= ~(_finite(c) & _finite(samples)).cpu()
        if none_left(results, unstable, warn):
            return results
        ok = (~unstable).to(device)
        c, samples = c[ok], samples[ok]
        results["w2_exact"] = mean_stderr(fourier_bures_wasserstein2(lam_d, c).cpu())
        emp = periodogram(samples)
        results["w2_empirical"] = mean_stderr(fourier_bures_wasserstein2(lam_d, emp).cpu())
        results["covariance_estimator"] = ("per frequency, (1/M) Σ_m |x̂_m(ω)|²/d over M independent particles "
                                           "(the circulant projection of (1/M) Σ x xᵀ)")
        # 4. theory
        pred = fourier_prediction(lam, sampler, n=N if model.requires_training else None, sigma=t.sigma,
                                  tau=t.tau if learned else 0.0, batch_size=t.batch_size, particles=M,
                                  sgd_steps=int(t.steps), init=model.init)
        terms = {k: float(v) for k, v in pred.items() if isinstance(v, (int, float)) and k not in DIAGNOSTICS}
        results["prediction_terms"] = terms
        results["w2_predicted"] = terms["total"] - terms["particles"]
        results["w2_predicted_empirical"] = terms["total"]
        results["diagnostics"] = {"eps_tau": pred["eps_tau"]}
        for m in pred["warnings"]:
            warn(m)
        # each frequency is a scalar model (periodogram of N samples): its 1/N check is N ≥ 5, i.e. d = 1
        results["regime"] = linear_regime(
            terms=terms, d=1, n=N if model.requires_training else None, eps_tau=pred["eps_tau"], times=times,
            steps=int(t.steps), tau=t.tau if learned else 0.0, unstable=results["unstable_replicates"],
            replicates=R, sampling="with_replacement")
        results["status"] = "ok"
        step = int(t.steps)
        log_w2(writer, results, terms, step)
        log_texture_images(writer, u, adsn_sample(lam, (1,), gen)[0], samples[0, :4].cpu(), step)
        log_figure(writer, "spectrum/radial_target_vs_learned",
                   radial_spectrum_figure(lam, c.cpu(), emp.cpu(), pred["output_variance"]), step)
    return results


def log_texture_images(writer, source: torch.Tensor, adsn: torch.Tensor, learned: torch.Tensor, step: int) -> None:
    """texture/source, texture/adsn_sample and texture/learned_samples (up to 4 side by side), all mapped to
    [0, 1] by the same affine map (mean ± 3 std of the source), so contrasts compare. Also PNGs in
    <run>/figures/."""
    s = 3 * float(source.std())
    img = lambda x: ((x.to(_F64) + s) / (2 * s)).clamp(0, 1)
    log_image(writer, "texture/source", img(source), step)
    log_image(writer, "texture/adsn_sample", img(adsn), step)
    gap = torch.ones(learned.shape[-2], 2, dtype=_F64)
    row = torch.cat([torch.cat([img(x), gap], -1) for x in learned], -1)[:, :-2]
    log_image(writer, "texture/learned_samples", row, step)


def radial_average(spec: torch.Tensor):
    """Average of a half-plane spectrum (..., n, n//2+1) over rings of integer radius |ω| (full-grid
    weights). Returns radii (r,) and averages (..., r)."""
    n = spec.shape[-2]
    k1 = torch.fft.fftfreq(n, 1 / n).view(-1, 1)
    k2 = torch.arange(n // 2 + 1).view(1, -1)
    r = (k1 ** 2 + k2 ** 2).sqrt().round().long().flatten()
    w = multiplicity(n).flatten()
    num = torch.zeros(*spec.shape[:-2], int(r.max()) + 1, dtype=_F64).index_add_(-1, r, (w * spec.to(_F64).flatten(-2)))
    den = torch.zeros(int(r.max()) + 1, dtype=_F64).index_add_(0, r, w)
    keep = den > 0
    return torch.arange(int(r.max()) + 1)[keep], (num / den)[..., keep]


def radial_spectrum_figure(lam, c, emp, h):
    """Radially averaged power spectrum: target λ, the learned sampler's exact variance (mean over
    replicates), its particle periodogram, and the exact-score sampler's h(λ)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    r, t = radial_average(lam)
    for y, kw in ((radial_average(emp.mean(0))[1], dict(color="tab:blue", lw=0.8, alpha=0.6, label="particles (periodogram)")),
                  (radial_average(c.mean(0))[1], dict(color="tab:orange", label="learned sampler, exact")),
                  (radial_average(h)[1], dict(color="tab:green", ls=":", label="exact score, sampler h(λ)")),
                  (t, dict(color="k", ls="--", label="target λ (ADSN)"))):
        ax.plot(r[1:], y[1:], **kw)
    ax.set(xscale="log", yscale="log", xlabel="radius |ω| (cycles per image)", ylabel="power (radial mean)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
