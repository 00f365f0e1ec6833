"""The full-matrix backend (data.kind=gaussian): Σ, the score matrices A (R, L, d, d) and the laws C
(R, d, d) as dense matrices, any A (non-symmetric, non-commuting). `MatrixBackend` is the linear score
(exact law, closed-form prediction); `NeuralBackend` a non-linear one (Gaussian fits of the particles)."""
from __future__ import annotations

import sys

import torch
from gsm.data.gaussian import make_gaussian
from gsm.figures import index_ticks, log_figure, log_ticks, plot_kernels, pyplot
from gsm.pipeline.backend import Backend
from gsm.pipeline.board import log_comparison
from gsm.pipeline.kinds import objective_predicts
from gsm.pipeline.probe import log_probe, record_probe
from gsm.pipeline.record import (as_scalar, dsm_loss_logger, finite, log_regime, log_w2, mean_stderr,
                                 measured_stderr, none_left, record_divergence, record_memorization,
                                 record_relaxation)
from gsm.pipeline.spec import as_config_error
from gsm.scores.nets import build_score_model
from gsm.theory.bures import (ESCAPE_TAIL, bures_wasserstein2, escaped_fraction, gaussian_fit,
                              gaussian_fit_w2, second_moment)
from gsm.theory.prediction import sampler_prediction
from gsm.theory.remainder import error_bar_draws
from gsm.theory.regime import neural_regime
from gsm.training.dsm import empirical_second_moment, train_linear_dsm, train_score_net



def resolve_device(name: str) -> torch.device:
    """auto → cuda if available else cpu; cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be one of auto | cpu | cuda, got {name}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA GPU is available (use device=cpu or device=auto)")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be one of float32 | float64, got {name}")
    return getattr(torch, name)


def objective_drift(objective, alphas, stds):
    """The objective's SGD drift κ_l (`sgd_drift`), None when it declares none (DSM's s_l² then)."""
    drift = getattr(objective, "sgd_drift", None)
    return None if drift is None else drift(alphas, stds)


def sgd_budget(spec) -> dict:
    """The prediction's arguments for the finite SGD budget (train.steps from A₀ = model.init), which
    enters exactly through the mean offset and at first order through the transient variance; 0 steps:
    the untrained score A₀, a valid baseline."""
    return dict(sgd_steps=spec.train.steps, init=spec.model.init)


class MatrixBackend(Backend):
    """Linear scores s_l(y) = −A_l y on a d-dimensional target."""

    def __init__(self, spec, results, warn):
        super().__init__(spec, results, warn)
        run = spec.settings
        self.device, self.dtype = resolve_device(run.device), resolve_dtype(run.dtype)
        self.progress = bool(run.progress) and sys.stderr.isatty()
        self.R, self.N = run.replicates, spec.data.n
        self.spectrum = spec.data.spectrum
        self.target = self.make_target()
        self.d, self.Sigma = self.target.dim, self.target.covariance.to(self.device)
        self.sampler = sampler = spec.sampler
        results.update(sampler.bind(self.Sigma))     # e.g. sampler=vp: init=prior needs Σ; reports nfe, steps
        self.alphas, self.stds = sampler.noise_levels(spec.train.sigma)
        model = self.build_model()
        self.learned = model.requires_training and spec.train.solver == "sgd"
        # closed-form scores (oracle, solver=exact) are kept in float64: no training dtype applies
        self.model = model.to(device=self.device, dtype=self.dtype if self.learned else torch.float64)
        self.gen = torch.Generator(self.device).manual_seed(run.seed)
        self.times = None

    def make_target(self):
        """The data's law: N(0, Σ), Σ = U diag(λ) Uᵀ (data=mixture: the mixture, `gsm.pipeline.mixture`)."""
        return make_gaussian(self.spectrum, self.spec.data.basis, self.spec.settings.seed)

    def fresh_samples(self) -> torch.Tensor:
        """M new samples of the data per kept replicate, (R', M, d) float64: what a perfect sampler would give."""
        return self.target.sample((self.particles.shape[0], self.particles.shape[1]), generator=self.gen,
                                  device=self.device)

    def build_model(self):
        """The score model at the sampler's levels (data=mixture, model=oracle: the mixture's exact score)."""
        with as_config_error("model"):     # the model's own checks (e.g. model.depth), as one-line errors
            return build_score_model(self.spec.model.options, dim=self.d, replicates=self.R, alphas=self.alphas,
                                     stds=self.stds, seed=self.spec.settings.seed,
                                     predicts=objective_predicts(self.spec.objective))

    def draw_data(self):
        self.train_x = self.target.sample((self.R, self.N), generator=self.gen, device=self.device)
        return self.train_x     # kept: memorized_fraction and the probe read it

    def probe(self) -> None:
        """eval.probe=true: the Gaussian-structure probe of the score at every level (`gsm.pipeline.probe`)."""
        ev = self.spec.evaluation
        if ev.probe:
            record_probe(self.results, self.model, self.train_x, self.alphas, self.stds, ev.probe_points,
                         self.spec.settings.seed, self.kept)

    def fit_score(self, x, writer) -> dict:
        """Oracle (the objective's minimiser on Σ), solver=exact (its minimiser on the data's second moment
        Σ̂) or DSM-SGD."""
        model, t, objective = self.model, self.spec.train, self.spec.objective
        if not model.requires_training:
            model.set_matrices(objective.score_function(self.target.covariance.to(x.device), self.alphas, self.stds)
                               .expand_as(model.A))
            return {}
        if t.solver == "exact":
            model.set_matrices(objective.score_function(empirical_second_moment(x), self.alphas, self.stds))
            return {}
        residual = getattr(objective, "sgd_residual", None)       # absent: DSM's (a user objective of 0.x)
        residual = residual(self.alphas, self.stds) if residual is not None else None
        out = train_linear_dsm(model.A.data, x, alphas=self.alphas, stds=self.stds, tau=t.tau,
                               batch_size=t.batch_size, steps=t.steps, sampling=t.sampling,
                               symmetric=model.symmetric, generator=self.gen, log_every=t.log_every,
                               progress=self.progress, residual=residual,
                               callback=dsm_loss_logger(writer))
        self._record_training()
        return {"diverged_at": out["diverged_at"].cpu()}

    @property
    def budget(self) -> dict:
        """The finite SGD budget the prediction models (SGD-trained scores)."""
        return sgd_budget(self.spec) if self.learned else {}

    def _record_training(self) -> None:
        t = self.spec.train
        self.times = record_relaxation(
            self.results, self.warn, t, self.alphas, self.stds, float(self.spectrum.min()),
            "the prediction includes the SGD transient (exact mean, first order in τ)" if self.budget else
            "the τ prediction assumes it is; raise train.steps or train.tau", drift=objective_drift(self.spec.objective,
                                                                              self.alphas, self.stds))
        if t.sampling == "epochs":
            self.warn("train.sampling=epochs lowers the SGD noise by up to ~20% (theory note §8): "
                      "the τ prediction assumes sampling with replacement")

    def sample(self, fit) -> bool:
        A = self.model.matrices()
        unstable = self.sampler.unstable(A).cpu() | record_divergence(self.results, fit)
        if none_left(self.results, unstable, self.warn):
            return False
        C = self.sampler.covariance(A)
        x = self.sampler.sample(self.model, self.R, self.d, generator=self.gen, device=self.device,
                                progress=self.progress, dtype=self.dtype)
        # a finite but huge A can still overflow its law or its (float32) particles: counted unstable too
        unstable |= ~(finite(C) & finite(x)).cpu()
        if none_left(self.results, unstable, self.warn):
            return False
        self.kept = ok = (~unstable).to(self.device)
        self.A, self.C, self.particles = A[ok], C[ok], x[ok]
        return True

    def evaluate(self) -> None:
        r, Sigma = self.results, self.Sigma.to(torch.float64)
        r["w2_exact"] = mean_stderr(bures_wasserstein2(Sigma, self.C).cpu())
        Cs = self.sampler.covariance_stationary(self.A)
        if Cs is not None:
            Cs = Cs[finite(Cs)]     # NaN where the doubling did not converge
            if len(Cs):
                r["w2_exact_stationary"] = mean_stderr(bures_wasserstein2(Sigma, Cs).cpu())
        r["w2_empirical"] = mean_stderr(bures_wasserstein2(Sigma, second_moment(self.particles)).cpu())
        r["covariance_estimator"] = "(1/M) Σ x xᵀ over M independent particles (known zero mean)"
        r.update(self.sampler.results_extra())     # e.g. law_method
        self.probe()

    def predict(self) -> dict:
        t, trained = self.spec.train, self.model.requires_training
        return sampler_prediction(self.sampler, self.spectrum, objective=self.spec.objective,
                                  n=self.N if trained else None, sigma=t.sigma,
                                  tau=t.tau if self.learned else 0.0, batch_size=t.batch_size,
                                  particles=self.sampler.particles, symmetric=self.model.symmetric, **self.budget,
                                  error_bar=error_bar_draws(self.R, self.d),
                                  resolution=measured_stderr(self.results))

    def regime_inputs(self) -> dict:
        t = self.spec.train
        return dict(d=self.d, n=self.N if self.model.requires_training else None,
                    eps_tau=self.results["diagnostics"].get("eps_tau"), times=self.times, steps=int(t.steps),
                    tau=t.tau if self.learned else 0.0, unstable=self.results["unstable_replicates"],
                    replicates=self.R, sampling=t.sampling)

    def log(self, writer, pred) -> None:
        step = self.spec.train.steps
        log_w2(writer, self.results, self.results["prediction_terms"], step, image=self.figures)
        self.sampler.log_extra(writer, self.A, self.Sigma.to(torch.float64), step)
        if self.figures:
            log_figures(writer, self.spectrum, self.C, pred, step)
            log_probe(writer, self.results, step)


class NeuralBackend(MatrixBackend):
    """A non-linear score (model=mlp, user models). The sampler's law is not Gaussian and has no closed
    form: w2_exact is null; w2_empirical = |m̂|² + B²(Σ, Ĉ) between N(0, Σ) and the Gaussian fit N(m̂, Ĉ)
    of the M particles (a lower bound on the true W2²), with its 1/M bias (`gaussian_fit_w2`) subtracted
    in w2_empirical_debiased. w2_predicted_linear is the theory's prediction for a linear score with the
    same (N, σ, τ, γ), for comparison."""

    def fit_score(self, x, writer) -> dict:
        t = self.spec.train
        if getattr(self.model, "from_data", False):     # declared (ScoreModel.from_data); a user module may lack it
            self.model.fit(x)
            return {}
        if t.solver != "sgd":
            raise ValueError(f"train.solver=exact needs a linear model (model=linear), got train.solver={t.solver}")
        optimizer = self.spec.optimizer(self.model.parameters())
        out = train_score_net(self.model, x, alphas=self.alphas, stds=self.stds, optimizer=optimizer,
                              batch_size=t.batch_size, steps=t.steps, generator=self.gen, log_every=t.log_every,
                              progress=self.progress, callback=dsm_loss_logger(writer),
                              loss=getattr(self.spec.objective, "neural_loss", None))    # None: DSM's
        return {"diverged_at": out["diverged_at"].cpu()}

    def sample(self, fit) -> bool:
        with torch.no_grad():
            x = self.sampler.sample(self.model, self.R, self.d, generator=self.gen, device=self.device,
                                    progress=self.progress, dtype=self.dtype)
        unstable = record_divergence(self.results, fit) | ~finite(x).cpu()
        if none_left(self.results, unstable, self.warn):
            return False
        self.kept = (~unstable).to(self.device)
        self.particles = x[self.kept]
        return True

    def evaluate(self) -> None:
        r = self.results
        w2, bias = (v.cpu() for v in gaussian_fit_w2(self.Sigma, self.particles))
        r["w2_exact"] = None
        r["w2_empirical"] = mean_stderr(w2)
        r["w2_empirical_debiased"] = mean_stderr(w2 - bias)
        r["particle_bias"] = mean_stderr(bias)
        r["w2_empirical_per_replicate"] = w2.tolist()     # non-linear scores can have outlier replicates
        # the reference is the law the same sampler has with the exact score (Langevin at σ > 0 is wider than
        # N(0, Σ): its own particles would "escape" Σ's tail), or the exact velocity (objective=cfm)
        exact = self.spec.objective.score_function(self.Sigma.to(torch.float64), self.alphas, self.stds).unsqueeze(0)
        self.escaped = escaped_fraction(self.sampler.covariance(exact)[0], self.particles).cpu()
        r["escaped_fraction_per_replicate"] = self.escaped.tolist()
        if (self.escaped > 0).any():
            self.warn(f"{int((self.escaped > 0).sum())} of {len(self.escaped)} replicates have particles beyond the "
                      f"{ESCAPE_TAIL:g} tail of the exact-score sampler's law (up to {100 * float(self.escaped.max()):.2g}"
                      " % of M): the learned score does not hold the sampler far from the data, and a few such "
                      "particles can dominate a replicate's w2_empirical (compare escaped_fraction_per_replicate "
                      "with w2_empirical_per_replicate)")
        record_memorization(r, self.particles, self.train_x[self.kept], self.fresh_samples())
        self.probe()
        r["w2_metric"] = ("W2² between the Gaussian fits of the two laws, |m̂|² + B²(Σ, Ĉ), with m̂ and Ĉ the mean "
                          "and centred (1/M) covariance of the M particles: a lower bound on the true W2² "
                          "(the sampler's law is not Gaussian); w2_empirical_debiased subtracts the first-order "
                          "1/M bias of a Gaussian law (particle_bias)")

    def predict(self) -> dict:
        """The linear theory with the same (N, σ, τ, budget); for a closed-form score the exact linear score's
        (an oracle) or, set from the N samples (model=empirical), the exact DSM minimiser's on them."""
        t = self.spec.train
        if not self.model.requires_training:
            n = self.N if getattr(self.model, "from_data", False) else None
            return sampler_prediction(self.sampler, self.spectrum, objective=self.spec.objective, n=n,
                                      sigma=t.sigma, tau=0.0, batch_size=t.batch_size, particles=None)
        return sampler_prediction(self.sampler, self.spectrum, objective=self.spec.objective, n=self.N,
                                  sigma=t.sigma, tau=t.tau,
                                  batch_size=t.batch_size, particles=None, **sgd_budget(self.spec))

    def regime_inputs(self) -> dict:
        return dict(escaped=self.escaped, unstable=self.results["unstable_replicates"], replicates=self.R,
                    tail=ESCAPE_TAIL)

    def record(self, pred) -> None:
        r = self.results
        r["regime"] = neural_regime(**self.regime_inputs())
        r["w2_predicted_linear"] = float(pred["total"])
        r["w2_predicted"] = r["w2_predicted_empirical"] = None

    def log(self, writer, pred) -> None:
        step, r = self.spec.train.steps, self.results
        for k in ("w2_empirical", "w2_empirical_debiased", "particle_bias", "w2_predicted_linear"):
            writer.add_scalar(f"eval/{k}", as_scalar(r[k]), step)
        writer.add_scalar("eval/escaped_fraction_max", float(self.escaped.max()), step)
        if "memorized_fraction" in r:
            writer.add_scalar("eval/memorized_fraction", r["memorized_fraction"]["mean"], step)
        log_regime(writer, r["regime"], step)
        log_comparison(writer, r, step, image=self.figures)   # debiased Gaussian-fit W2² against the linear-score prediction
        if self.figures:
            log_figures(writer, self.spectrum, gaussian_fit(self.particles)[1], pred, step)
            log_probe(writer, r, step)


def log_figures(writer, spectrum, C, pred, step):
    """spectrum/target_vs_learned and theory/kernels, in TensorBoard and as PNGs in <run>/figures/."""
    log_figure(writer, "spectrum/target_vs_learned", spectrum_figure(spectrum, C, pred), step)
    log_figure(writer, "theory/kernels", plot_kernels(pred), step)


def spectrum_figure(spectrum, C, pred=None):
    """The eigenvalues of the sampler covariances C (R, d, d) against the target's and the predicted
    c_i = h(λ_i) (the sampler's variance with the mean score: exact score, plus the SGD mean offset of a
    finite budget), all sorted decreasingly and plotted against their rank i (log–log)."""
    plt = pyplot()

    order = spectrum.argsort(descending=True)
    lam = spectrum[order]
    learned = torch.linalg.eigvalsh(0.5 * (C + C.transpose(-1, -2))).flip(-1).cpu()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    i = torch.arange(1, lam.numel() + 1)
    for r in range(min(learned.shape[0], 32)):
        ax.plot(i, learned[r], color="tab:orange", alpha=0.2, lw=0.8)
    ax.plot(i, learned.mean(0), color="tab:orange", label="measured: learned sampler's covariance (mean, and 32 replicates)")
    if pred is not None and "sampler_variance" in pred:
        ax.plot(i, pred["sampler_variance"].to(torch.float64).cpu()[order], "o:", color="tab:blue", ms=3,
                label="predicted: sampler variance c_i = h(λ_i) with the mean score")
    ax.plot(i, lam, "k--", label="target spectrum λ")
    ax.set(yscale="log", xlabel="index i (eigenvalues sorted decreasingly)", ylabel="eigenvalue")
    index_ticks(ax, lam.numel())
    log_ticks(ax, "y")
    ax.legend(fontsize=7)
    fig.set_layout_engine("tight")     # laid out when drawn, once, with the run title log_figure adds
    return fig
