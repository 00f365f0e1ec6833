"""The prediction of E[W2²] for the VP schemes of Pierret & Galerne (docs/vp.md, docs/theory.md §9):
bias = Σ(√λ − √h(λ))², h the exact-score output variance (`spectral_output_variance`), split into
truncation, initialisation and discretisation; 1/N from the divided differences of h as a function of
Σ̂'s eigenvalue (`output_divided_differences`); τ from `gsm.theory.linear_chain.chain_tau_kernel` with the
per-level SGD variance (`gsm.theory.sgd`); 1/M particles. The schemes are `gsm.samplers.vp_schemes`."""
from __future__ import annotations

import copy
import math

import torch

from gsm.samplers.linear_chain import LinearChain
from gsm.samplers.vp_schemes import (_check_eigenvalues, _singular_score_check, continuous_variance,
                                     exact_scores)
from gsm.theory.linear_chain import chain_tau_kernel, divided_differences_from_jets, inverse_affine_series

_F64 = torch.float64


# --------------------------------------------------------------------------------- spectral laws

def spectral_output_variance(sampler, lam: torch.Tensor, scores=None, trajectory: bool = False):
    """Output variance per eigenvalue (O(d·K)): the chain with diagonal scores `scores` (..., L, d)
    (None: exact scores of λ), or the continuous law for sde/ode. Initial variance 1 or σ_T(λ)."""
    lam = lam.to(_F64)
    v0 = sampler.schedule.marginal(lam, sampler.T) if sampler.init == "prior" else 1.0
    if sampler.chain is None:
        if scores is not None:
            raise ValueError(f"sampler.scheme={sampler.scheme} is the exact continuous law: it needs model=oracle")
        return continuous_variance(sampler.scheme, lam, sampler.schedule, sampler.eps, v0)
    a = exact_scores(lam, sampler.schedule, sampler.times) if scores is None else scores
    return sampler.chain.variance(a, v0, trajectory)


# ------------------------------------------------------------------------------------- prediction

def _w2(lam: torch.Tensor, v: torch.Tensor) -> float:
    """Σ(√λ − √v₊)²: W2² between centred Gaussians sharing an eigenbasis (variances λ, v)."""
    return float(((lam.sqrt() - v.clamp_min(0).sqrt()) ** 2).sum())


def _finite_budget(sampler, tau, batch_size, symmetric: bool, sgd_steps, init: str):
    """The finite SGD budget of `vp_prediction` (None: stationary SGD) and the warnings it raises."""
    from gsm.theory.sgd import SGD_INIT, SGDBudget
    warnings, budget = [], None
    if sgd_steps is not None and tau > 0 and sampler.chain is not None:
        if init not in SGD_INIT:
            raise ValueError(f"init must be one of {' | '.join(SGD_INIT)}, got {init}")
        if symmetric:
            warnings.append("vp: the finite SGD budget is not modelled for the symmetric variant "
                            "(stationary SGD assumed)")
        else:
            budget = SGDBudget(int(sgd_steps), float(tau), int(batch_size), init)
    return budget, warnings


def _bias_terms(sampler, lam: torch.Tensor):
    """The exact bias split into truncation Σ(√λ − √σ_ε)², discretisation (the scheme from p_T vs σ_ε) and
    initialisation (from N(0, I) vs from p_T); and h, the output variance with the exact scores."""
    h_exact = spectral_output_variance(sampler, lam)
    h_prior = spectral_output_variance(_with_init(sampler, "prior"), lam)
    se = sampler.schedule.marginal(lam, sampler.eps)
    return {"truncation": _w2(lam, se), "discretization": _w2(lam, h_prior) - _w2(lam, se),
            "initialization": _w2(lam, h_exact) - _w2(lam, h_prior)}, h_exact


def _budget_transient(sampler, lam: torch.Tensor, budget, tau, v0: torch.Tensor):
    """After a finite SGD budget: (mean scores (L, d), Var(Δ)/τ, Cov(Δ_ij, Δ_ji)/τ) of
    `level_sgd_transient`, and the output variance with the mean scores."""
    from gsm.theory.sgd import SGD_INIT, level_sgd_transient
    alpha, s = sampler.schedule.alpha_std(sampler.times)
    a_mean, var, cross = level_sgd_transient(lam, alpha ** 2, sampler.chain.n_levels, budget)
    a_mean[s == 0] = SGD_INIT[budget.init]               # s = 0: the DSM gradient vanishes, A stays at A₀
    return (a_mean, var / tau, cross / tau), sampler.chain.variance(a_mean, v0)


def _n_kernel(sampler, lam: torch.Tensor, n, v0: torch.Tensor, budget, rho, W) -> torch.Tensor:
    """K_N (d, d) from the output's divided differences in Σ̂'s eigenvalue (zero without N or a chain)."""
    from gsm.theory.langevin import kernel_n
    d = lam.numel()
    if n is None or sampler.chain is None:
        return torch.zeros(d, d, dtype=_F64)
    alpha, s = sampler.schedule.alpha_std(sampler.times)
    if bool((s == 0).any()) and n <= d:
        raise ValueError(f"data.n must be > d = {d} for scheme={sampler.scheme} with eps = 0 "
                         "(the plug-in score at t = 0 is Σ̂⁻¹)")
    H1, H2 = output_divided_differences(sampler.chain, lam, alpha ** 2, s ** 2, v0, budget)
    return kernel_n(lam, H1, H2, rho, W)


def _tau_kernel(sampler, lam: torch.Tensor, batch_size, symmetric: bool, transient, v0: torch.Tensor,
                rho, W) -> torch.Tensor:
    """K_τ (d, d) per unit τ (`chain_tau_kernel`): stationary SGD at every level (`level_sgd_variance`), or
    the `transient` of `_budget_transient` around the mean scores."""
    if transient is not None:
        return chain_tau_kernel(sampler.chain, transient[0], transient[1], rho, W, v0, cross=transient[2])
    from gsm.theory.sgd import level_sgd_variance
    alpha, _ = sampler.schedule.alpha_std(sampler.times)
    V = level_sgd_variance(lam, alpha ** 2, batch_size, symmetric)
    a = exact_scores(lam, sampler.schedule, sampler.times)
    return chain_tau_kernel(sampler.chain, a, V, rho, W, v0, symmetric)


def vp_prediction(lam, sampler, *, n=None, tau=0.0, batch_size=1, particles=None, symmetric=False,
                  sgd_steps=None, init="zeros") -> dict:
    """E[W2²(N(0, Σ), law of the VP sampler's output)] ≈ bias + (1/N)ΣK_N + τΣK_τ [+ (1/M)ΣK_M].

    bias (exact): truncation Σ(√λ − √σ_ε)², initialisation (the scheme from N(0, I) vs from p_T; 0 for
    init=prior) and discretisation (the scheme from p_T vs the exact law σ_ε). 1/N: K_N = (1+δ_ij)λ_iλ_j
    [½W_ij H¹² + ρ_i H²] (`output_divided_differences`: the output as a function of Σ̂'s eigenvalue,
    divided differences from 4-term jets, O(d·K + d²)). τ: `chain_tau_kernel` with `level_sgd_variance`
    (stationary SGD at every level; first order in τ). 1/M: ½(1+δ_ij)W_ij h_i h_j.

    sgd_steps = S (with tau > 0, symmetric=False): a finite SGD budget from A₀ = a₀I (`init`), as
    `gsm.theory.diffusion.diffusion_prediction`: the exact mean score after S steps,
    E[a_l] = 1/m + (a₀ − 1/m)(1 − τs²m/L)^S (m = α²μ + s², L levels drawn uniformly; a function of Σ̂,
    so it also enters the 1/N term) gives `sgd_mean_offset` (part of `optimization`), and the τ term uses
    the transient covariance and Cov(Δ_ij, Δ_ji) of `gsm.theory.sgd.level_sgd_transient` around the mean
    scores. A level at t = 0 (ε = 0, heun/rk4) has s = 0: SGD never moves it (E[a] = a₀).
    Keys as `gsm.theory.diffusion.diffusion_prediction`."""
    from gsm.theory.langevin import bures_second_order_weights, kernel_m
    lam = _check_eigenvalues(lam)
    d = lam.numel()
    _singular_score_check(sampler, lam)
    budget, warnings = _finite_budget(sampler, tau, batch_size, symmetric, sgd_steps, init)
    out, h_exact = _bias_terms(sampler, lam)
    v0 = sampler.schedule.marginal(lam, sampler.T) if sampler.init == "prior" else torch.ones_like(lam)
    h, transient = h_exact, None
    if budget is not None:
        transient, h = _budget_transient(sampler, lam, budget, tau, v0)
    out["sgd_mean_offset"] = _w2(lam, h) - _w2(lam, h_exact)
    rho, W = bures_second_order_weights(lam, h)
    W = torch.nan_to_num(W, nan=0.0)     # λ_i = λ_j = 0: B² does not see that block at second order (Σ^½ kills it)
    K_N = _n_kernel(sampler, lam, n, v0, budget, rho, W)
    out["generalization"] = float(K_N.sum()) / n if n is not None else 0.0
    K_tau = torch.zeros(d, d, dtype=_F64)
    if tau > 0 and sampler.chain is not None:
        K_tau = _tau_kernel(sampler, lam, batch_size, symmetric, transient, v0, rho, W)
    out["optimization"] = out["sgd_mean_offset"] + tau * float(K_tau.sum())
    K_M = kernel_m(h, W)
    out["particles"] = float(K_M.sum()) / particles if particles is not None else 0.0
    out["total"] = _w2(lam, h_exact) + out["generalization"] + out["optimization"] + out["particles"]
    if n is not None and n < 5 * d:
        warnings.append(f"N = {n} < 5d = {5 * d}: the 1/N term may be off by more than ~5% (note §5.5)")
    out.update(kernel_n=K_N, kernel_tau=K_tau, kernel_m=K_M, bias_per_eigenvalue=(lam.sqrt() - h.sqrt()) ** 2,
               sampler_variance=h, eigenvalues=lam, d_over_n=d / n if n is not None else 0.0, warnings=warnings)
    return out


def _with_init(sampler, init: str):
    other = copy.copy(sampler)
    other.init = init
    return other


def mean_score_series(lam: torch.Tensor, alpha2: torch.Tensor, s2: torch.Tensor, levels: int, budget=None):
    """Series in μ (L, d, 4) of the score at each level as a function of Σ̂'s eigenvalue μ: the plug-in
    1/m, m = α²μ + s², or after a finite SGD budget its mean 1/m + (a₀ − 1/m) r^S, r = 1 − τs²m/L (affine
    in μ, so r(μ + x)^S = Σ_k C(S, k) r^{S−k} (−τs²α²/L)^k x^k)."""
    inv = inverse_affine_series(lam, alpha2, s2)
    if budget is None:
        return inv
    from gsm.samplers.linear_chain import _series_mm
    from gsm.theory.sgd import SGD_INIT
    c = budget.tau * s2.view(-1, 1) / levels
    r0 = 1 - c * (alpha2.view(-1, 1) * lam + s2.view(-1, 1))
    r1 = -c * alpha2.view(-1, 1)
    S = int(budget.steps)
    rS = torch.stack([math.comb(S, k) * r0 ** max(S - k, 0) * r1 ** k if k <= S else torch.zeros_like(r0)
                      for k in range(inv.shape[-1])], -1)
    a0 = torch.zeros_like(inv)
    a0[..., 0] = SGD_INIT[budget.init]
    mean = inv + _series_mm(a0 - inv, rS)
    return torch.where((s2 == 0).view(-1, 1, 1), a0, mean)


def output_divided_differences(chain: LinearChain, lam: torch.Tensor, alpha2: torch.Tensor, s2: torch.Tensor,
                               v0: torch.Tensor, budget=None):
    """Effective h^[1](λ_i, λ_j), h^[2](λ_i, λ_j, λ_i) (d, d) of the output law C = P(Σ̂) C_0 P(Σ̂)ᵀ + Q(Σ̂)
    under Σ̂ = Σ + E, plug-in scores 1/(α_l²Σ̂ + s_l²I), C_0 = diag(v0) fixed (init=prior: Σ_T of the
    true Σ, not a function of Σ̂). In Σ's eigenbasis, to second order in E (symmetric),

        C¹_ij = E_ij [p^[1]_ij (v0_i p_i + v0_j p_j) + Q^[1]_ij],
        C²_ii = Σ_m E_im² [2 p_i p^[2]_imi v0_i + (p^[1]_im)² v0_m + Q^[2]_imi],

    the brackets replacing h^[1] and h^[2] in K_N (for constant v0 they are the divided differences of
    h = p² v0 + Q, by the product rule)."""
    P, Q = chain.propagator_series(mean_score_series(lam, alpha2, s2, chain.n_levels, budget))
    p1, p2 = divided_differences_from_jets(lam, P)
    Q1, Q2 = divided_differences_from_jets(lam, Q)
    vp = v0 * P[:, 0]
    H1 = p1 * (vp.view(-1, 1) + vp.view(1, -1)) + Q1
    H2 = 2 * vp.view(-1, 1) * p2 + p1 ** 2 * v0.view(1, -1) + Q2
    return H1, H2
