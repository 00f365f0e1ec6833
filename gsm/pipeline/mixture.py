"""The backends of data=mixture (`gsm.data.mixture`): the data are not Gaussian, so the true distance is
measured by optimal transport between samples, next to the Gaussian-fit bound and the linear theory's
prediction for the Gaussian surrogate N(0, Σ) (the data's covariance).

* `MixtureLinearBackend`: a linear score trained on the mixture's samples (the full-matrix backend, whose
  law is Gaussian and exact: w2_exact is the Bures distance to the surrogate, a lower bound on the true one).
* `MixtureNeuralBackend`: model=oracle (the mixture's exact score, `gsm.scores.mixture.MixtureScore`, or its
  exact velocity for sampler=flow) or a neural score, sampled through the samplers' non-linear path.

Both add, per replicate r, with M' = min(M, data.ot_particles) particles x, fresh target samples t, t' and
surrogate samples g of size M' (`gsm.theory.transport`):

    w2_ot = W2²(x, t),  w2_ot_floor = W2²(t', t),  w2_ot_debiased = w2_ot − w2_ot_floor (0 in mean when the
    particles have the data's law),  w2_ot_surrogate = W2²(g, t) − w2_ot_floor (how far the data are from
    Gaussian: the error of a perfect linear score),

the same sliced (all M particles), `mode_weights` (particles assigned to a component by their posterior)
and the gap between w2_ot_debiased and the linear prediction for the surrogate.
"""
from __future__ import annotations

import torch

from gsm.pipeline.kinds import objective_predicts
from gsm.pipeline.matrix import MatrixBackend, NeuralBackend
from gsm.pipeline.record import as_scalar, mean_stderr, record_memorization
from gsm.scores.mixture import MixtureScore
from gsm.theory.transport import ot_w2, sliced_w2

SLICED_PROJECTIONS = 128     # directions θ of the sliced W2²: its Monte-Carlo error is in its s.e. over replicates
TRANSPORT_KEYS = ("w2_ot", "w2_ot_floor", "w2_ot_debiased", "w2_ot_surrogate", "w2_sliced", "w2_sliced_debiased",
                  "w2_ot_gap")


def transport_distances(particles: torch.Tensor, fresh_pair, surrogate, ot_particles: int, generator) -> dict:
    """The per-replicate distances of the module doc: particles (R, M, d) → {name: (R,) float64}. fresh_pair(m)
    gives two independent data samples (2, R, m', d), m' ≤ m (a finite pool may hold fewer); surrogate, the
    Gaussian surrogate (`gsm.data.gaussian.Gaussian`)."""
    R, M, d = particles.shape
    t, t2 = fresh_pair(min(M, int(ot_particles)))
    m = t.shape[1]
    x = particles[:, :m].to(torch.float64)
    g = surrogate.sample((R, m), generator=generator, device=particles.device)
    floor = ot_w2(t2, t)
    w2 = ot_w2(x, t)
    # the sliced distance is cheap: every particle (that fresh samples can match), against samples of the same size
    s, s2 = fresh_pair(M)
    xs = particles[:, :s.shape[1]]
    sliced, sliced_floor = sliced_w2(xs, s), sliced_w2(s2, s)
    return {"w2_ot": w2, "w2_ot_floor": floor, "w2_ot_debiased": w2 - floor,
            "w2_ot_surrogate": ot_w2(g, t) - floor, "w2_sliced": sliced, "w2_sliced_debiased": sliced - sliced_floor,
            "w2_ot_particles": m}


def record_transport(results: dict, particles: torch.Tensor, data, generator, fresh_pair) -> None:
    """w2_ot, its floor, debiased and surrogate values, sliced W2² (module doc) and, for a mixture, mode_weights
    into results; fresh_pair as in `transport_distances`."""
    per = transport_distances(particles, fresh_pair, data.surrogate(), data.ot_particles, generator)
    for k, v in per.items():
        if k != "w2_ot_particles":
            results[k] = mean_stderr(v)
    if data.kind == "mixture":
        w = data.mixture.mode_weights(particles)
        R = w.shape[0]
        results["mode_weights"] = {"mean": w.mean(0).tolist(),
                                   "stderr": (w.std(0, unbiased=True) / R ** 0.5).tolist() if R > 1 else None,
                                   "true": data.mixture.weights.tolist(), "n": R}
    results["w2_ot_particles"] = per["w2_ot_particles"]
    results["w2_ot_metric"] = (
        "exact optimal-transport W2² (POT ot.emd2) between M' particles and M' fresh data samples per replicate "
        "(M' = w2_ot_particles); w2_ot_floor: the same between two independent data samples (the plug-in "
        "estimate's bias at this M'); w2_ot_debiased = w2_ot − w2_ot_floor (0 in mean when the particles have the "
        "data's law); w2_ot_surrogate: the same for samples of the Gaussian surrogate N(0, Σ), the error of a "
        "perfect linear score; w2_sliced(_debiased): sliced W2² over all M particles"
        + (" (data.kind=dataset: fresh samples are the replicate's held-out pool samples, drawn without "
           "replacement, so M' and the sliced size are at most half the held-out rest)" if data.kind == "dataset"
           else ""))


def record_not_gaussian(results: dict, data, predicted_key: str) -> None:
    """The gap w2_ot_gap = w2_ot_debiased − <predicted_key> (the linear prediction for the surrogate),
    data_gaussian, and unless the mixture is one Gaussian the verdict's `data` line (the data are not Gaussian,
    and what the linear prediction then means), which a linear score's verdict counts as a broken assumption."""
    ot, surrogate, predicted = results["w2_ot_debiased"], results["w2_ot_surrogate"], results.get(predicted_key)
    if predicted is not None:
        results["w2_ot_gap"] = {"mean": ot["mean"] - float(predicted), "stderr": ot["stderr"], "n": ot["n"]}
    results["data_gaussian"] = data.is_gaussian
    if data.is_gaussian:     # identical components (separation 0): the theory's assumption holds
        return
    se = lambda v: "n/a" if v["stderr"] is None else format(v["stderr"], ".2g")    # noqa: E731
    line = (f"NOT Gaussian ({data.description}): {predicted_key} "
            f"= {as_scalar(predicted):.4g} is the linear theory's prediction for the Gaussian surrogate N(0, Σ) "
            "with the data's covariance, i.e. of the Bures distance to it (w2_exact or w2_empirical, a lower bound "
            "on the true distance; its 1/N and τ terms assume Gaussian fourth moments); the true distance is "
            f"w2_ot_debiased = {ot['mean']:.4g} ± {se(ot)} (gap "
            f"{ot['mean'] - as_scalar(predicted):+.4g}), and the surrogate itself is w2_ot_surrogate = "
            f"{surrogate['mean']:.4g} ± {se(surrogate)} from the data (what no linear score can remove)")
    regime = results["regime"]
    regime["data"] = line
    if regime.get("prediction") is not False:     # a linear score: its theory assumes Gaussian data
        regime["reasons"].insert(0, line)
        regime["ok"] = False


def log_transport(writer, results: dict, step: int) -> None:
    """eval/<transport key> scalars, eval/mode_weight_<k> and the verdict's data line (text regime/data)."""
    for k in TRANSPORT_KEYS:
        if k in results:
            writer.add_scalar(f"eval/{k}", as_scalar(results[k]), step)
    for k, w in enumerate(results.get("mode_weights", {}).get("mean", [])):
        writer.add_scalar(f"eval/mode_weight_{k}", w, step)
    if results["regime"].get("data"):
        writer.add_text("regime/data", results["regime"]["data"], step)


class MixtureDraws:
    """The mixture backends' data draws: the mixture, and fresh samples of it."""

    def make_target(self):
        return self.spec.data.mixture

    def fresh_pair(self, m: int) -> torch.Tensor:
        """Two independent samples of m data points per kept replicate: (2, R', m, d) float64."""
        return self.spec.data.mixture.sample((2, self.particles.shape[0], m), generator=self.gen,
                                             device=self.particles.device)


class MixtureLinearBackend(MixtureDraws, MatrixBackend):
    """A linear score on data=mixture (module doc): trained on the mixture's samples; the law, w2_exact and
    the prediction are those of the Gaussian surrogate, the OT distances the true ones."""

    def evaluate(self) -> None:
        super().evaluate()
        record_transport(self.results, self.particles, self.spec.data, self.gen, self.fresh_pair)
        record_memorization(self.results, self.particles, self.train_x[self.kept], self.fresh_samples())

    def record(self, pred: dict) -> None:
        super().record(pred)
        record_not_gaussian(self.results, self.spec.data, "w2_predicted")

    def log(self, writer, pred) -> None:
        super().log(writer, pred)
        log_transport(writer, self.results, self.spec.train.steps)


class MixtureNeuralBackend(MixtureDraws, NeuralBackend):
    """model=oracle on data=mixture (the exact score, not trained, sampled in float64) or a neural score
    trained on the mixture's samples (module doc)."""

    def build_model(self):
        if self.spec.model.exact:
            self.dtype = torch.float64     # a closed-form score: no training dtype applies
            return MixtureScore(self.spec.data.mixture, self.alphas, self.stds,
                                predicts=objective_predicts(self.spec.objective))
        return super().build_model()

    def fit_score(self, x, writer) -> dict:
        return {} if self.spec.model.exact else super().fit_score(x, writer)

    def evaluate(self) -> None:
        super().evaluate()
        record_transport(self.results, self.particles, self.spec.data, self.gen, self.fresh_pair)

    def record(self, pred: dict) -> None:
        super().record(pred)
        record_not_gaussian(self.results, self.spec.data, "w2_predicted_linear")

    def log(self, writer, pred) -> None:
        super().log(writer, pred)
        log_transport(writer, self.results, self.spec.train.steps)
