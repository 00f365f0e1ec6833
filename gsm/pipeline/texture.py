"""The Fourier-diagonal backend (data.kind=texture, model=fourier_linear | fourier_oracle): the same
stages, results keys and TensorBoard tags as the full-matrix backend, but every covariance is a
per-frequency vector on the rfft2 half-plane, so nothing d×d is ever formed (d = n² = 65536 for a
256×256 texture)."""
from __future__ import annotations

import torch
from hydra.utils import instantiate

from gsm.data.texture import adsn_sample, multiplicity, periodogram
from gsm.figures import log_figure, log_image, pyplot
from gsm.pipeline.backend import Backend
from gsm.pipeline.matrix import resolve_device, resolve_dtype
from gsm.pipeline.record import (dsm_loss_logger, finite, log_w2, mean_stderr, none_left, record_divergence,
                                 record_relaxation)
from gsm.samplers.fourier import fourier_sample, sampler_unstable, sampler_variance
from gsm.scores.fourier import dsm_optimum_fourier
from gsm.theory.fourier import fourier_bures_wasserstein2, fourier_prediction
from gsm.training.fourier import train_fourier_dsm

_F64 = torch.float64


class TextureBackend(Backend):
    """A stationary Gaussian texture (ADSN of an image) with a Fourier-diagonal linear score."""

    def __init__(self, spec, results, warn):
        super().__init__(spec, results, warn)
        run, t = spec.settings, spec.train
        self.device, self.dtype = resolve_device(run.device), resolve_dtype(run.dtype)
        self.R, self.N = run.replicates, spec.data.n
        self.image = spec.data.image
        n = self.n = spec.data.size
        self.lam = spec.data.spectrum
        self.sampler = sampler = spec.sampler
        self.alphas, self.stds = sampler.noise_levels(t.sigma)
        model = instantiate(spec.model.options, size=n, replicates=self.R, levels=self.alphas.numel(),
                            noise_stds=self.stds)
        self.learned = model.requires_training and t.solver == "sgd"
        self.model = model.to(device=self.device, dtype=self.dtype if self.learned else _F64)
        self.gen = torch.Generator(self.device).manual_seed(run.seed)
        self.times = None
        w = multiplicity(n)
        results["texture"] = {"size": n, "d": n * n, "pixel_variance": float((w * self.lam).sum()) / n ** 2,
                              "lambda_max": float(self.lam.max()), "lambda_floor": float(self.lam.min()),
                              "floored_frequencies": int((w * (self.lam == self.lam.min())).sum())}

    def draw_data(self):
        """R data sets of N ADSN samples, kept as their DFTs."""
        return torch.fft.rfft2(adsn_sample(self.lam, (self.R, self.N), self.gen, device=self.device))

    def fit_score(self, xhat, writer) -> dict:
        model, t, n = self.model, self.spec.train, self.n
        if not model.requires_training:
            model.set_coefficients(dsm_optimum_fourier(self.lam.to(self.device), self.alphas, self.stds))
            return {}
        if t.solver == "exact":
            model.set_coefficients(dsm_optimum_fourier((xhat.abs() ** 2).mean(1) / n ** 2, self.alphas, self.stds))
            return {}
        fit = train_fourier_dsm(model.a.data, xhat, alphas=self.alphas, stds=self.stds, tau=t.tau,
                                batch_size=t.batch_size, steps=t.steps, generator=self.gen, log_every=t.log_every,
                                callback=dsm_loss_logger(writer))
        self.times = record_relaxation(self.results, self.warn, t, self.alphas, self.stds, float(self.lam.min()),
                                       "the prediction's 'transient' term accounts for it at first order only")
        if t.sampling != "with_replacement":
            self.warn("the Fourier trainer samples with replacement only; train.sampling is ignored")
        return fit

    def sample(self, fit) -> bool:
        a = self.model.coefficients()
        unstable = sampler_unstable(self.sampler, a).cpu() | record_divergence(self.results, fit)
        if none_left(self.results, unstable, self.warn):
            return False
        c = sampler_variance(self.sampler, a)
        M, n = int(self.sampler.particles), self.n
        x0 = self.sampler.init_var ** 0.5 * torch.randn(self.R, M, n, n, generator=self.gen, device=self.device,
                                                         dtype=self.dtype)
        x = fourier_sample(self.sampler, self.model.a.detach(), x0, self.gen)
        # a finite but huge a can still overflow its law or its (float32) particles: counted unstable too
        unstable |= ~(finite(c) & finite(x)).cpu()
        if none_left(self.results, unstable, self.warn):
            return False
        ok = (~unstable).to(self.device)
        self.c, self.particles = c[ok], x[ok]
        return True

    def evaluate(self) -> None:
        r, lam = self.results, self.lam.to(self.device)
        r["w2_exact"] = mean_stderr(fourier_bures_wasserstein2(lam, self.c).cpu())
        self.periodogram = periodogram(self.particles)
        r["w2_empirical"] = mean_stderr(fourier_bures_wasserstein2(lam, self.periodogram).cpu())
        r["covariance_estimator"] = ("per frequency, (1/M) Σ_m |x̂_m(ω)|²/d over M independent particles "
                                     "(the circulant projection of (1/M) Σ x xᵀ)")

    def trace_sigma(self) -> float:
        """tr Σ = W2²(N(0, Σ), δ₀), summed over the half-plane as W2² is."""
        lam = self.lam.to(torch.float64)
        return float(fourier_bures_wasserstein2(lam, torch.zeros_like(lam)))

    def predict(self) -> dict:
        t, trained = self.spec.train, self.model.requires_training
        return fourier_prediction(self.lam, self.sampler, n=self.N if trained else None, sigma=t.sigma,
                                  tau=t.tau if self.learned else 0.0, batch_size=t.batch_size,
                                  particles=int(self.sampler.particles), sgd_steps=int(t.steps), init=self.model.init)

    def regime_inputs(self) -> dict:
        # each frequency is a scalar model (periodogram of N samples): its 1/N check is N ≥ 5, i.e. d = 1
        t = self.spec.train
        return dict(d=1, n=self.N if self.model.requires_training else None,
                    eps_tau=self.results["diagnostics"]["eps_tau"], times=self.times, steps=int(t.steps),
                    tau=t.tau if self.learned else 0.0, unstable=self.results["unstable_replicates"],
                    replicates=self.R, sampling="with_replacement")

    def log(self, writer, pred) -> None:
        step = self.spec.train.steps
        log_w2(writer, self.results, self.results["prediction_terms"], step, image=self.figures)
        if not self.figures:
            return
        log_texture_images(writer, self.image, adsn_sample(self.lam, (1,), self.gen)[0],
                           self.particles[0, :4].cpu(), step)
        log_figure(writer, "spectrum/radial_target_vs_learned",
                   radial_spectrum_figure(self.lam, self.c.cpu(), self.periodogram.cpu(), pred["output_variance"]),
                   step)


def log_texture_images(writer, source: torch.Tensor, adsn: torch.Tensor, learned: torch.Tensor, step: int) -> None:
    """texture/source, texture/adsn_sample and texture/learned_samples (up to 4 side by side), all mapped to
    [0, 1] by the same affine map (mean ± 3 std of the source), so contrasts compare. Also PNGs in
    <run>/figures/."""
    s = 3 * float(source.std())
    zoom = max(1, READABLE_PX // source.shape[-1])       # pixels repeated: a 64×64 texture shows at 256×256
    img = lambda x: ((x.to(_F64) + s) / (2 * s)).clamp(0, 1).repeat_interleave(zoom, -2).repeat_interleave(zoom, -1)
    log_image(writer, "texture/source", img(source), step)
    log_image(writer, "texture/adsn_sample", img(adsn), step)
    gap = torch.ones(learned.shape[-2] * zoom, 2 * zoom, dtype=_F64)
    row = torch.cat([torch.cat([img(x), gap], -1) for x in learned], -1)[:, :-2 * zoom]
    log_image(writer, "texture/learned_samples", row, step)
    log_figure(writer, "texture/source_vs_samples", texture_panels(source, adsn, learned, s), step)


READABLE_PX = 256     # the texture images' smallest width on screen


def texture_panels(source, adsn, learned, s: float):
    """One labelled figure: the source image, a sample of its Gaussian model (ADSN: the target law) and
    the learned sampler's particles, on the same grey scale (mean ± s)."""
    plt = pyplot()

    panels = [("source image", source), ("ADSN sample (target law)", adsn),
              *((f"learned sample {k + 1}", x) for k, x in enumerate(learned))]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.9))
    for ax, (label, x) in zip(axes, panels):
        ax.imshow(x.to(_F64).numpy(), cmap="gray", vmin=-s, vmax=s, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    return fig


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
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4.2))
    r, t = radial_average(lam)
    for y, kw in ((radial_average(emp.mean(0))[1], dict(color="tab:blue", lw=0.8, alpha=0.6, label="measured: particles' periodogram")),
                  (radial_average(c.mean(0))[1], dict(color="tab:orange", label="measured: learned sampler's exact law")),
                  (radial_average(h)[1], dict(color="tab:green", ls=":", label="predicted: sampler h(λ) with the exact score")),
                  (t, dict(color="k", ls="--", label="target λ (ADSN)"))):
        ax.plot(r[1:], y[1:], **kw)
    ax.set(xscale="log", yscale="log", xlabel="radius |ω| (cycles per image)", ylabel="power (radial mean)")
    ax.legend(fontsize=7)
    fig.set_layout_engine("tight")     # laid out when drawn, once, with the run title log_figure adds
    return fig
