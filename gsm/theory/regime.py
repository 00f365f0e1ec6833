"""One regime verdict per run: is the run inside the first-order regime of the theory (docs/theory.md,
"Regime of validity"), and if not, what dominates and how to get back in.

Each first-order assumption that fails gives one reason line, with the part of the prediction it puts at
stake (an estimate of the size of the prediction's error it can cause), so the reasons are sorted by it
and the first one is the dominant one:

* SGD not stationary: fewer than 5 relaxation times 1/(τ s_l²(α_l²λ_min + s_l²)/L) at the slowest level
  l. Where the prediction models the finite budget (its `modelled["sgd_budget"]`: exact mean offset,
  first-order transient) the whole `sgd_mean_offset` rests on that model; where it does not, the
  prediction assumes stationary SGD and misses the offset;
* ε_τ = τ max α²λ(α²λ + s²)/(2b) > 0.005: the first-order τ term is off by ≈ c·ε_τ, c ≤ 8.5 (theory §5.5);
* N < 5d: the 1/N term is off by ≈ κ_N·d/N, |κ_N| ≤ 0.3;
* SGD or sampler unstable in some replicates (left out of the means: E[W2²] is conditional);
* neural scores: particles escaped beyond the 1e-9 tail of N(0, Σ);
* train.sampling=epochs: the τ term assumes sampling with replacement (up to 20 % lower noise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from gsm.theory.remainder import REL_TOL, error_of

RELAXATION_TIMES_MIN = 5.0      # e^{-5} < 1 % of the initial SGD mean offset is left
EPS_TAU_MAX = 0.005             # first-order τ term within 5 % for every spectrum tested (§5.5)
N_OVER_D_MIN = 5                # first-order 1/N term within 5 % (§5.5): the rule where no estimate exists


def relaxation_times(steps: int, tau: float, alphas: torch.Tensor, stds: torch.Tensor, lam_min: float,
                     levels: int | None = None, drift: torch.Tensor | None = None) -> torch.Tensor:
    """Per level l, how many relaxation times SGD ran: (S/L)·τ κ_l(α_l²λ_min + s_l²) (each sample hits a
    level with probability 1/L; the slowest direction relaxes at rate τκm_min per sample), κ_l the
    objective's drift coefficient (`sgd_drift`; None: DSM's s_l², CFM's is 1). (L,) float64."""
    a2 = alphas.to(torch.float64).pow(2)
    s2 = stds.to(torch.float64).pow(2)
    kappa = s2 if drift is None else torch.as_tensor(drift, dtype=torch.float64)
    L = levels or alphas.numel()
    return steps / L * tau * kappa * (a2 * lam_min + s2)


def steps_for_relaxation(steps: int, times: torch.Tensor, target: float = RELAXATION_TIMES_MIN) -> int:
    """SGD steps (same τ, b, levels) for `target` relaxation times at the slowest level."""
    rate = float(times.min()) / max(steps, 1)
    return math.ceil(target / rate) if rate > 0 else 0


@dataclass
class Regime:
    """The verdict: `reasons` sorted by what they put at stake (largest first)."""

    reasons: list = field(default_factory=list)     # (stake, line)

    def add(self, stake: float, line: str) -> None:
        self.reasons.append((abs(float(stake)), line))

    def as_dict(self, scope: str) -> dict:
        lines = [line for _, line in sorted(self.reasons, key=lambda r: -r[0])]
        return {"ok": not lines, "reasons": lines, "scope": scope}


def linear_regime(*, terms: dict, d: int, n: int | None, eps_tau: float | None, times: torch.Tensor | None,
                  steps: int, tau: float, unstable: int, replicates: int, sampling: str,
                  modelled: dict | None = None, remainders: dict | None = None,
                  resolution: dict | None = None) -> dict:
    """The verdict for a linear score. terms: the prediction's terms; times: `relaxation_times` per level
    (None when nothing was trained by SGD); modelled: the prediction's `modelled` (what it took into account);
    remainders: the prediction's `remainders` (what each term neglects, `gsm.theory.remainder`): a term whose
    error bar exceeds `tolerance` is a reason; resolution: the s.e. of w2_exact and w2_empirical."""
    v = Regime()
    total = abs(terms.get("total", 0.0)) or 1.0
    offset = terms.get("sgd_mean_offset", terms.get("transient", 0.0))     # the Fourier pipeline's name for it
    tau_term = terms.get("optimization", 0.0) - terms.get("sgd_mean_offset", 0.0)   # its fluctuation part
    if times is not None and steps == 0:
        v.add(max(abs(offset), 1e-300), "train.steps=0: the untrained score A₀ (a baseline: its law is exact, "
              "but it is not the trained score the theory's terms describe)")
    elif times is not None and float(times.min()) < RELAXATION_TIMES_MIN:
        need = steps_for_relaxation(steps, times)
        how = ("is modelled by the finite-budget transient" if (modelled or {}).get("sgd_budget")
               else "is NOT in the prediction (it assumes stationary SGD)")
        v.add(max(abs(offset), 1e-300), f"SGD is not stationary: {float(times.min()):.3g} relaxation times at the "
              f"slowest level (< {RELAXATION_TIMES_MIN:g}); the SGD mean offset is {offset:.3g} of the predicted "
              f"{terms.get('total', 0.0):.3g} and {how}; train.steps ≥ {need} "
              f"reaches {RELAXATION_TIMES_MIN:g} (or fewer levels, a larger train.tau)")
    rem = (remainders or {}).get("terms", {})
    allowed, against = tolerance((resolution or {}).get("w2_exact"), terms.get("total", 0.0) - terms.get("particles", 0.0))
    if "optimization" in rem:
        _check_remainder(v, rem["optimization"], allowed, against, "the τ term", "lower train.tau (its next "
                         "order shrinks like τ²) or raise train.batch_size")
    elif eps_tau is not None and tau > 0 and eps_tau > EPS_TAU_MAX:
        v.add(8.5 * eps_tau * tau_term, f"eps_tau = {eps_tau:.3g} > {EPS_TAU_MAX}: the first-order τ term "
              f"({tau_term:.3g}) may be off by ~{100 * min(8.5 * eps_tau, 1):.0f} %; lower train.tau to "
              f"{tau * EPS_TAU_MAX / eps_tau:.3g} or raise train.batch_size")
    if "generalization" in rem:
        _check_remainder(v, rem["generalization"], allowed, against, "the 1/N term",
                         f"raise data.n (N = {n} = {n / d:.3g}d; the next order also grows near a stability edge, "
                         "e.g. Langevin at γ close to 2(λ_min + σ²))")
    elif n is not None and n < N_OVER_D_MIN * d:
        gen = terms.get("generalization", 0.0)
        v.add(0.3 * d / n * gen, f"N = {n} < {N_OVER_D_MIN}d = {N_OVER_D_MIN * d}: the 1/N term ({gen:.3g}) "
              f"may be off by more than ~5 %; raise data.n")
    if "particles" in rem:
        allowed_m, against_m = tolerance((resolution or {}).get("w2_empirical"), terms.get("total", 0.0))
        _check_remainder(v, rem["particles"], allowed_m, against_m.replace("w2_exact", "w2_empirical")
                         .replace("w2_predicted", "w2_predicted_empirical"), "the 1/M particle term (of "
                         "w2_predicted_empirical)", "raise sampler.particles (w2_exact does not depend on M)")
    if unstable:
        v.add(total, f"{unstable} of {replicates} replicates diverged or gave an unstable sampler and are left "
              "out of the means (the measured W2² is conditional on stability)")
    if sampling != "with_replacement" and tau > 0:
        v.add(0.2 * tau_term, "train.sampling=epochs lowers the SGD noise by up to ~20 %: the τ term assumes "
              "sampling with replacement")
    return v.as_dict("the first-order prediction (w2_predicted) of this linear score")


def tolerance(stderr: float | None, predicted: float) -> tuple[float, str]:
    """How large the prediction's error bar may be: below one s.e. of the measurement (a run with more
    replicates resolves more, so it is held to more) and below REL_TOL of the prediction."""
    rel = REL_TOL * abs(predicted)
    if stderr is not None and stderr < rel:
        return stderr, f"one s.e. of w2_exact ({stderr:.2g})"
    return rel, f"{100 * REL_TOL:g} % of w2_predicted ({rel:.2g})"


def _check_remainder(v: Regime, rem: dict, allowed: float, against: str, term: str, knob: str) -> None:
    """One reason when `term`'s error bar (|estimate| + 2 s.e.) exceeds `allowed`, with its size and knob."""
    err = error_of(rem)
    if err <= allowed:
        return
    if rem.get("note"):
        v.add(err, f"{term}'s next order is unbounded ({rem['note']}); {knob}")
        return
    v.add(err, f"{term} neglects {rem['estimate']:.3g} ± {rem['stderr']:.2g} ({rem['method']}): an error bar of "
          f"{err:.3g} on the prediction, above {against}; {knob}")


def neural_regime(*, escaped: torch.Tensor, unstable: int, replicates: int, tail: float) -> dict:
    """The checks for a non-linear score: its law has no prediction (w2_predicted_linear is the linear
    theory's, for comparison), so `prediction` is False and `ok` says only whether the checks that apply
    pass: no particles escaped, no replicate diverged."""
    v = Regime()
    bad = int((escaped > 0).sum())
    if bad:
        v.add(float(escaped.max()), f"{bad} of {len(escaped)} replicates have particles beyond the {tail:g} tail "
              f"of N(0, Σ) (up to {100 * float(escaped.max()):.2g} % of M): the learned score does not confine "
              "the sampler; train longer (train.steps) or use model.skip=true")
    if unstable:
        v.add(1.0, f"{unstable} of {replicates} replicates diverged and are left out of the means")
    out = v.as_dict("the particles of a non-linear score: escaped particles, divergence")
    out["prediction"] = False      # ok: the checks that apply pass; there is no prediction to be in regime of
    return out


def verdict_lines(regime: dict | None) -> list[str]:
    """The console's first lines: the verdict, then one line per reason (dominant first), and the `data` line
    (data that are not Gaussian: what the linear prediction then means)."""
    if not regime:
        return []
    lines = reason_lines(regime)
    if regime.get("data") and regime.get("prediction") is False:     # a linear verdict lists it among its reasons
        lines.append(f"  data: {regime['data']}")
    return lines


def reason_lines(regime: dict) -> list[str]:
    """The verdict's head and its reasons (`verdict_lines` without the data line)."""
    if regime.get("prediction") is False:
        head = ("regime: no prediction for a non-linear score (w2_predicted_linear is the linear theory's, for "
                "comparison only); checks ")
        if regime["ok"]:
            return [head + "passed: no escaped particles, no diverged replicate"]
        return [head + f"FAILED — dominant: {regime['reasons'][0]}", *(f"  also: {r}" for r in regime["reasons"][1:])]
    if regime["ok"]:
        return [f"regime: ok (no assumption fails; checked: {regime['scope']})"]
    return [f"regime: OUT OF REGIME — dominant: {regime['reasons'][0]}",
            *(f"  also: {r}" for r in regime["reasons"][1:])]
