"""The prediction of E[W2²] for a linear sampler and a training objective (docs/theory.md §5, §9, §11):
the sampler's law map composed with the objective's score-error model, term by term,

    E[W2²] ≈ Σ(√λ − √h*)²                    bias: the exact score through the law map (exact)
           + (1/N) Σ_ij K_N(λ_i, λ_j)        generalisation: the plug-in score's divided differences (note §5.2)
           + [Σ(√λ − √h̄)² − Σ(√λ − √h*)²]    sgd_mean_offset: the exact mean score after a finite budget
           + τ Σ_ij K_τ(λ_i, λ_j)            optimisation: the SGD fluctuations, second order in Δ (note §5.3)
           + (1/M) Σ_ij K_M(λ_i, λ_j)        particles: W2 measured from M particles (note §5.4)

with h* = h(a*) and h̄ = h(E[a]) the output variances of the law map h at the target and mean scores.
One function serves every sampler (`sampler_prediction`: its step map's law, `Sampler.law`) and every
objective (`gsm.training.objectives`); `modelled` says which parts were modelled and how.
"""
from __future__ import annotations

import torch

from gsm.theory.bures import bures_second_order_weights, kernel_m, kernel_n
from gsm.theory.remainder import (ERROR_BAR_MAX_DIM, REL_TOL, error_of, generalization_remainder, isotropic_start,
                                  particles_remainder)
from gsm.training.objectives import DSM, SGDBudget

F64 = torch.float64

N_OVER_D_MIN = 5      # first-order 1/N term within ~5 % (note §5.5)
EPS_TAU_MAX = 0.005   # first-order τ term within ~5 % (§5.5)


def check_spectrum(eigenvalues, allow_zero: bool = False) -> torch.Tensor:
    """λ as a non-empty 1-D float64 tensor of finite values > 0 (≥ 0 with allow_zero), else ValueError."""
    lam = torch.as_tensor(eigenvalues, dtype=F64).detach().cpu()
    ok = lam.ndim == 1 and lam.numel() > 0 and bool(torch.isfinite(lam).all())
    if not ok or not bool((lam >= 0).all() if allow_zero else (lam > 0).all()):
        raise ValueError(f"eigenvalues must be a non-empty 1-D tensor of finite values {'>=' if allow_zero else '>'} 0, "
                         f"got {lam.tolist()}")
    return lam


def w2_commuting(lam: torch.Tensor, h: torch.Tensor) -> float:
    """Σ(√λ − √h₊)²: B² between centred Gaussians sharing an eigenbasis (variances λ, h)."""
    return float(((lam.sqrt() - h.clamp_min(0).sqrt()) ** 2).sum())


def linear_prediction(law, objective, lam, alphas, stds, *, n=None, tau=0.0, batch_size=1, particles=None,
                      symmetric=False, budget: SGDBudget | None = None, bias_terms=None, error_bar: int = 0,
                      resolution: dict | None = None, target=None) -> dict:
    """E[W2²(N(0, Σ), law of the output)] term by term for the law map `law` (`gsm.theory.law`) whose scores
    are learned by `objective` at the levels (α_l, s_l) (module doc).

    n: N (None: the score is not fitted to data); tau: τ (0: not trained by SGD); budget: a finite SGD
    budget (None: SGD at stationarity); particles: M (None: no 1/M term); target: (a*, h*), the objective's
    target scores (L, d) and the law's variance there (d,), when the caller has them (an oracle run's law:
    not computed again; None: computed here); bias_terms(h*) → the named parts
    of the bias (default {"discretization": bias}). Returns floats (the terms, `total`), kernels (d, d)
    `kernel_n`, `kernel_tau` (per unit τ), `kernel_m` (each a stride-0 zero (d, d) view when its term is
    absent: no d×d work), `bias_per_eigenvalue`, `sampler_variance`, `eigenvalues`, diagnostics `eps_tau`,
    `d_over_n`, `warnings`, and `modelled`; with error_bar = draws > 0, also `remainders` (`prediction_remainders`: what each first-order term neglects)."""
    d = lam.numel()
    budget = budget if (budget is not None and tau > 0) else None
    if target is None:
        a_star = objective.target(lam, alphas, stds)
        target = (a_star, law.variance(a_star))
    a_star, h_star = _checked_target(target, len(alphas), d)
    bias = w2_commuting(lam, h_star)
    out = dict(bias_terms(h_star)) if bias_terms is not None else {"discretization": bias}
    a = objective.mean(lam, alphas, stds, budget) if budget is not None else a_star
    h = law.variance(a) if budget is not None else h_star
    # a term the run does not have gets a stride-0 zero kernel (no d×d memory, no derivative work)
    K_N = K_tau = K_M = torch.zeros((), dtype=F64).expand(d, d)
    if n is not None or particles is not None:
        rho, W = bures_second_order_weights(lam, h)
    if n is not None:
        K_N = kernel_n(lam, *law.divided_differences(lam, objective, alphas, stds, budget), rho, W)
    if tau > 0 and (budget is None or budget.steps > 0):
        var, cross = objective.fluctuations(lam, alphas, stds, tau, batch_size, budget, symmetric)
        K_tau = law.tau_cells(lam, a, h, var, cross if budget is not None else None, symmetric) / tau
    if particles is not None:
        K_M = kernel_m(h, W)
    out["generalization"] = float(K_N.sum()) / n if n is not None else 0.0
    out["sgd_mean_offset"] = w2_commuting(lam, h) - bias
    out["optimization"] = out["sgd_mean_offset"] + tau * float(K_tau.sum())
    out["particles"] = float(K_M.sum()) / particles if particles is not None else 0.0
    out["total"] = bias + out["generalization"] + out["optimization"] + out["particles"]
    eps_tau = objective.eps_tau(lam, alphas, stds, tau, batch_size) if tau > 0 else 0.0
    out.update(kernel_n=K_N, kernel_tau=K_tau, kernel_m=K_M, bias_per_eigenvalue=(lam.sqrt() - h.sqrt()) ** 2,
               sampler_variance=h, eigenvalues=lam, eps_tau=eps_tau, d_over_n=d / n if n is not None else 0.0,
               warnings=_warnings(objective, lam, alphas, stds, n, tau, batch_size, eps_tau),
               modelled=_modelled(objective, n, tau, budget, symmetric, particles))
    if error_bar:
        score_of = (lambda mu: objective.mean(mu, alphas, stds, budget)) if budget is not None \
            else (lambda mu: objective.target(mu, alphas, stds))
        out["remainders"] = prediction_remainders(law, score_of, lam, h, n, particles, K_N, K_M,
                                                  eps_tau, out["optimization"] - out["sgd_mean_offset"], error_bar,
                                                  out["total"], resolution or {})
    return out


def _checked_target(target, levels: int, d: int):
    """(a*, h*) as float64, or a one-line ValueError naming `target` and the shapes it needs."""
    a, h = (torch.as_tensor(x, dtype=F64) for x in target)
    if tuple(a.shape) != (levels, d) or tuple(h.shape) != (d,):
        raise ValueError(f"target must be (a* of shape ({levels}, {d}), h* of shape ({d},)), "
                         f"got shapes {tuple(a.shape)}, {tuple(h.shape)}")
    return a, h


TAU_NEXT_ORDER = 8.5      # the τ term's relative next order is ≤ 8.5·ε_τ on every spectrum tested (note §5.5)


def prediction_remainders(law, score_of, lam, h, n, particles, K_N, K_M, eps_tau, tau_term, draws, total,
                          resolution) -> dict:
    """What each first-order term neglects, as {"estimate", "stderr", "method"} per term (None: not
    estimated, with the reason in `not_estimated`), and `error` (w2_predicted's error bar, the 1/M term's
    left out) and `error_empirical` (w2_predicted_empirical's): sums of |estimate| + 2 s.e. resolution: the
    measurement's s.e. ("w2_exact", "w2_empirical"); the draws grow until each estimate is finer than half
    the verdict's tolerance min(s.e., REL_TOL·prediction) or resolved."""
    d, rem, skipped = lam.numel(), {}, {}
    target = _half_tolerance(resolution.get("w2_exact"), total)
    if n is not None:
        if d > ERROR_BAR_MAX_DIM or not isotropic_start(law):
            skipped["generalization"] = (f"d = {d} > {ERROR_BAR_MAX_DIM}" if d > ERROR_BAR_MAX_DIM
                                         else "the law map does not start from N(0, c₀I)")
        else:
            rem["generalization"] = dict(generalization_remainder(law, score_of, lam, n, K_N, draws, target),
                                         method="Wishart Monte Carlo, second-order control variate")
    if particles is not None and d <= ERROR_BAR_MAX_DIM:
        rem["particles"] = dict(particles_remainder(lam, h, K_M, particles, draws,
                                                    _half_tolerance(resolution.get("w2_empirical"), total)),
                                method="Wishart Monte Carlo, second-order control variate")
    if eps_tau and tau_term:
        rem["optimization"] = {"estimate": 0.0, "stderr": TAU_NEXT_ORDER * eps_tau * abs(tau_term) / 2,
                               "method": f"bound {TAU_NEXT_ORDER:g}·ε_τ·(τ term) (note §5.5)"}
    error = sum(error_of(rem.get(k)) for k in ("generalization", "optimization"))
    return {"terms": rem, "not_estimated": skipped, "error": error,
            "error_empirical": error + error_of(rem.get("particles"))}


def _half_tolerance(stderr, total) -> float:
    return 0.5 * min(stderr if stderr else float("inf"), REL_TOL * abs(total))


def _modelled(objective, n, tau, budget, symmetric, particles) -> dict:
    """Which parts the prediction modelled, and at which order (the regime verdict reads it)."""
    return {"objective": objective.name, "bias": "exact",
            "generalization": "first order in 1/N" if n is not None else "none (score not fitted to data)",
            "optimization": ("none (not trained by SGD)" if tau <= 0 else "first order in τ, " + (
                "stationary SGD" if budget is None else f"finite budget of {budget.steps} steps: exact mean, "
                + ("additive-noise fluctuations (symmetric)" if symmetric else "first-order transient covariance"))),
            "sgd_budget": budget is not None,
            "particles": "first order in 1/M" if particles is not None else "none"}


def _warnings(objective, lam, alphas, stds, n, tau, batch_size, eps_tau) -> list[str]:
    """Where the first-order expansion may not hold."""
    d, warnings = lam.numel(), []
    if n is not None and n < N_OVER_D_MIN * d:
        warnings.append(f"N = {n} < {N_OVER_D_MIN}d = {N_OVER_D_MIN * d}: the 1/N term may be off by more than "
                        "~5% (note §5.5)")
    if tau > 0 and eps_tau > EPS_TAU_MAX:
        warnings.append(f"eps_tau = {eps_tau:.3g} > {EPS_TAU_MAX}: the first-order τ term may be off by more than "
                        "~5% (note §5.5)")
    if tau > 0 and not objective.mean_square_stable(lam, alphas, stds, tau, batch_size):
        warnings.append(f"tau = {tau}: SGD is not mean-square stable at some level (note §2.3); the τ term is "
                        "meaningless")
    return warnings


def sampler_prediction(sampler, eigenvalues, *, objective=None, n=None, sigma=None, tau=0.0, batch_size=1,
                       particles=None, symmetric=False, sgd_steps=None, init="zeros", error_bar: int = 0,
                       resolution: dict | None = None, target=None) -> dict:
    """`linear_prediction` for a gsm sampler (`gsm.samplers.base.Sampler`): its levels
    (`noise_levels(σ)`), its law map (`law(λ)`), its named bias parts (`bias_terms`) and its own
    warnings (`prediction_warnings`). objective: default DSM. sgd_steps = S (with τ > 0): the finite SGD
    budget from A₀ = `init` (zeros | identity | optimum); error_bar: Wishart draws of the `remainders` (0: none) (`gsm.theory.remainder`);
    target: (a*, h*) when the caller has the law at the target (`linear_prediction`)."""
    objective = objective or DSM()
    lam = check_spectrum(eigenvalues, allow_zero=sampler.allows_singular)
    sampler.check_prediction(lam, n)
    alphas, stds = sampler.noise_levels(sigma)
    budget = SGDBudget(int(sgd_steps), float(tau), int(batch_size), init) \
        if sgd_steps is not None and tau > 0 else None
    out = linear_prediction(sampler.law(lam), objective, lam, alphas, stds, n=n, tau=tau, batch_size=batch_size,
                            particles=particles, symmetric=symmetric, budget=budget,
                            bias_terms=lambda h: sampler.bias_terms(lam, h, sigma), error_bar=error_bar,
                            resolution=resolution, target=target)
    out["warnings"] += sampler.prediction_warnings(lam, n=n, sigma=sigma)
    return out
