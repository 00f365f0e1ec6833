"""The prediction of E[W2²] for DDPM / DDIM with linear scores (docs/theory.md §6, §11):
bias from the exact-score chain per eigenvalue; the 1/N kernel from the divided differences of the
output variance as a matrix function of Σ̂ (`ddpm_divided_differences`); the τ kernel from the per-level
SGD covariance pushed through the chain (`ddpm_tau_kernel`), with the finite SGD budget's mean offset
and transient (`gsm.theory.sgd`); the 1/M particle kernel. The chains are `gsm.samplers.reverse_chain`."""
from __future__ import annotations

import torch

from gsm.samplers.reverse_chain import ReverseChain, ddpm_variance, exact_score_eigenvalues
from gsm.theory.langevin import _check, _check_spectrum, bures_second_order_weights, kernel_m, kernel_n
from gsm.theory.sgd import SGD_INIT, SGDBudget, level_sgd_transient, level_sgd_variance, sgd_mean_score


def _ddpm_map_on_matrix(J: torch.Tensor, chain: ReverseChain, init_var: float,
                        budget: SGDBudget | None = None) -> torch.Tensor:
    """h(J) for the map h: λ ↦ output variance with the plug-in score a_k = 1/(ᾱ_k λ + 1 − ᾱ_k) (or, with a
    finite SGD `budget`, its mean `sgd_mean_score`), evaluated on square matrices J (..., n, n) with the
    matrix operations only (all factors commute)."""
    eye = torch.eye(J.shape[-1], dtype=torch.float64)
    C = init_var * eye.expand_as(J)
    L = chain.levels.numel()
    for k in range(chain.K, -1, -1):
        F = chain.c[k].item() * eye
        if chain.g[k] != 0:
            F = F - chain.g[k].item() * sgd_mean_score(J, chain.alpha_bar[k].item(), L, budget)
        C = F @ C @ F + chain.q[k].item() * eye
    return C


def ddpm_divided_differences(lam: torch.Tensor, chain: ReverseChain, init_var: float = 1.0,
                             budget: SGDBudget | None = None):
    """h(λ_i), h^[1](λ_i, λ_j) and h^[2](λ_i, λ_j, λ_i) of the DDPM map h (output variance with the
    plug-in score, or the mean score after a finite SGD `budget`, as a function of the eigenvalue), by
    Opitz' formula: h of the upper-bidiagonal J = [[λ_i, 1, 0], [0, λ_j, 1], [0, 0, λ_i]] holds h^[1] at
    (0, 1) and h^[2] at (0, 2); exact for repeated eigenvalues too. lam (d,) → (d,), (d, d), (d, d)."""
    lam = lam.to(torch.float64)
    d = lam.numel()
    J = torch.zeros(d, d, 3, 3, dtype=torch.float64)
    J[..., 0, 0] = lam.view(d, 1)
    J[..., 1, 1] = lam.view(1, d)
    J[..., 2, 2] = lam.view(d, 1)
    J[..., 0, 1] = J[..., 1, 2] = 1.0
    H = _ddpm_map_on_matrix(J, chain, init_var, budget)
    return H[..., 0, 0].diagonal(), H[..., 0, 1], H[..., 0, 2]


def ddpm_tau_kernel(lam: torch.Tensor, chain: ReverseChain, batch_size: int = 1, init_var: float = 1.0,
                    symmetric: bool = False, transient=None) -> torch.Tensor:
    """K_τ(λ_i, λ_j) of the diffusion chain: E[B²(Σ, C(A* + Δ))] − B²(Σ, C(A*)) ≈ τ Σ_ij K_τ, with Δ_k the
    stationary SGD fluctuations of `level_sgd_variance` at each level read by the chain (A* the exact score).

    A perturbation Δ at level k changes F_k by −g_kΔ, so in the eigenbasis (ℓ = the product of the
    later maps F₀⋯F_{k−1}, f = F_k, c = the variance C_k at t_k, all diagonal at A*):

        C¹_ij = −g ℓ_iℓ_j (Δ_ij c_j f_j + Δ_ji c_i f_i),   C²_ij = g² ℓ_iℓ_j Σ_m Δ_im c_m Δ_jm,

    and E[B²] − B⁰ = Σ_i ρ_i E[C²_ii] + ½ Σ_ij W_ij E[(C¹_ij)²] (§4, base = the output variance h).
    With V = Var(Δ)/τ (row-wise, uncorrelated entries), per level

        K_ij = g² ℓ_i² [ ½(1+δ_ij) W_ij ℓ_j² (V_ij c_j² f_j² + V_ji c_i² f_i²) + ρ_i V_ij c_j ],

    (symmetric Δ: ½ W_ij ℓ_j² V_ij (c_i f_i + c_j f_j)² in the first part), summed over the levels.
    Returns (d, d) per unit τ.

    transient = (a, var, cross) of `level_sgd_transient` (finite SGD budget): the chain is expanded
    around the mean scores a instead of A*, with Var(Δ) = var and X = Cov(Δ_ij, Δ_ji) = cross, so the
    first part is ½ W_ij ℓ_j² (V_ij c_j²f_j² + V_ji c_i²f_i² + 2X_ij c_if_ic_jf_j) (X_ii = V_ii).
    Returns the τ term itself (d, d) then, not per unit τ."""
    lam = lam.to(torch.float64)
    a = exact_score_eigenvalues(lam, chain.alpha_bar) if transient is None else transient[0]   # (K+1, d)
    f = chain.c.view(-1, 1) - chain.g.view(-1, 1) * a          # F_k eigenvalues
    # variance at each grid level (before step k) and the propagator ℓ_k = f_0 ⋯ f_{k−1}
    K = chain.K
    c = torch.empty(K + 1, lam.numel(), dtype=torch.float64)
    v = torch.full_like(lam, float(init_var))
    for k in range(K, -1, -1):
        c[k] = v
        v = f[k] ** 2 * v + chain.q[k]
    h = v
    ell = torch.cumprod(torch.cat([torch.ones(1, lam.numel(), dtype=torch.float64), f[:-1]]), 0)
    rho, W = bures_second_order_weights(lam, h)
    V = level_sgd_variance(lam, chain.alpha_bar, batch_size, symmetric) if transient is None else transient[1]
    eye = torch.eye(lam.numel(), dtype=torch.float64)
    out = torch.zeros(lam.numel(), lam.numel(), dtype=torch.float64)
    for k in chain.levels.tolist():
        cf = c[k] * f[k]
        li, lj = ell[k].view(-1, 1), ell[k].view(1, -1)
        if transient is not None:
            first = 0.5 * W * lj ** 2 * (V[k] * cf.view(1, -1) ** 2 + V[k].T * cf.view(-1, 1) ** 2
                                         + 2 * transient[2][k] * cf.view(-1, 1) * cf.view(1, -1))
        elif symmetric:
            first = 0.5 * W * lj ** 2 * V[k] * (cf.view(-1, 1) + cf.view(1, -1)) ** 2
        else:
            first = 0.5 * (1 + eye) * W * lj ** 2 * (V[k] * cf.view(1, -1) ** 2 + V[k].T * cf.view(-1, 1) ** 2)
        second = rho.view(-1, 1) * V[k] * c[k].view(1, -1)
        out += chain.g[k] ** 2 * li ** 2 * (first + second)
    return out


def _final_of_marginal(lam, ab0, final):
    """Variance of the final map applied to the exact marginal S = ᾱλ + 1 − ᾱ at t_min (exact score)."""
    S = ab0 * lam + 1 - ab0
    return {"none": S, "rescale": S / ab0, "tweedie": ab0 * lam ** 2 / S}[final]


def _sgd_budget(sgd_steps, tau: float, b: int, init: str, symmetric: bool) -> SGDBudget | None:
    """The finite SGD budget of `diffusion_prediction` (None: SGD at stationarity), checked."""
    sgd_steps = _check("sgd_steps", sgd_steps, low=0, integer=True, allow_none=True)
    if init not in SGD_INIT:
        raise ValueError(f"init must be one of {' | '.join(SGD_INIT)}, got {init}")
    budget = SGDBudget(sgd_steps, tau, b, init) if sgd_steps is not None and tau > 0 else None
    if budget is not None and symmetric:
        raise ValueError("sgd_steps is supported with symmetric=False only")
    return budget


def _bias_terms(lam, chain: ReverseChain, init_var: float, final: str):
    """The exact-score bias Σ(√λ − √h)², split into t_min, discretization and initialization; and its total."""
    ab = chain.alpha_bar
    a = exact_score_eigenvalues(lam, ab)
    bias_opt = float(((lam.sqrt() - ddpm_variance(a, chain, init_var).sqrt()) ** 2).sum())
    h_exact_init = ddpm_variance(a, chain, ab[-1] * lam + 1 - ab[-1])         # started from x_T ~ N(0, S_T)
    t_min_term = float(((lam.sqrt() - _final_of_marginal(lam, float(ab[0]), final).sqrt()) ** 2).sum())
    exact_init = float(((lam.sqrt() - h_exact_init.sqrt()) ** 2).sum())
    return {"t_min": t_min_term, "discretization": exact_init - t_min_term,
            "initialization": bias_opt - exact_init}, bias_opt


def _tau_kernel(lam, chain: ReverseChain, b: int, init_var: float, symmetric: bool, tau: float,
                budget: SGDBudget | None) -> torch.Tensor:
    """K_τ (d, d) per unit τ: `ddpm_tau_kernel` at stationarity, or its transient form around the mean
    scores of a finite `budget` (divided by τ)."""
    if budget is not None:
        cells = ddpm_tau_kernel(lam, chain, b, init_var, symmetric,
                                transient=level_sgd_transient(lam, chain.alpha_bar, chain.levels.numel(), budget))
        return cells / tau
    d = lam.numel()
    return ddpm_tau_kernel(lam, chain, b, init_var, symmetric) if tau > 0 else torch.zeros(d, d, dtype=torch.float64)


def _diagnostics(lam, chain: ReverseChain, n, tau: float, b: int):
    """eps_tau = τ max ᾱλ(ᾱλ + 1 − ᾱ)/(2b) over the levels read, and warnings where the first-order expansion
    may not hold."""
    d = lam.numel()
    lv = chain.alpha_bar[chain.levels].view(-1, 1)
    m = lv * lam + 1 - lv
    eps_tau = tau * float((lv * lam * m).max()) / (2 * b)
    warnings = []
    if n is not None and n < 5 * d:
        warnings.append(f"N = {n} < 5d = {5 * d}: the 1/N term may be off by more than ~5% (note §5.5)")
    if tau > 0 and eps_tau > 0.005:
        warnings.append(f"eps_tau = {eps_tau:.3g} > 0.005: the first-order τ term may be off by more than ~5%")
    if tau > 0 and float((tau * (1 - lv) * (1 + 1 / b) * m).max()) >= 2:
        warnings.append(f"tau = {tau}: SGD is not mean-square stable at some level (τs²(1+1/b)m_max ≥ 2)")
    return eps_tau, warnings


def diffusion_prediction(lam, chain: ReverseChain, *, n=None, tau=0.0, batch_size=1, particles=None,
                         init_var=1.0, symmetric=False, final="none", sgd_steps=None, init="zeros") -> dict:
    """E[W2²(N(0, Σ), law of the DDPM/DDIM output)] ≈ bias + (1/N) Σ K_N + τ Σ K_τ [+ (1/M) Σ K_M].

    * bias = Σ(√λ − √h(λ))², h the exact-score output variance (`ddpm_variance`), exact, split as
      t_min (the exact reverse process stopped at t_min, then the final map: Σ(√λ − √f(S_{t_min}))²),
      initialization (x_T ~ N(0, v_T I) instead of N(0, S_T)) and discretization (the rest);
    * generalization: K_N = (1+δ_ij)λ_iλ_j[½ W_ij h^[1](λ_i,λ_j)² + ρ_i h^[2](λ_i,λ_j,λ_i)] (note §5.2 with h
      the DDPM map: the plug-in scores (ᾱ_kΣ̂ + (1−ᾱ_k)I)⁻¹ make the output h(Σ̂)); first order in 1/N;
    * optimization: `ddpm_tau_kernel` (stationary SGD at every level; first order in τ, no τ/N term);
    * particles: K_M = ½(1+δ_ij) W_ij h_i h_j (M independent particles, (1/M)Σ x xᵀ).

    sgd_steps = S (with tau > 0): SGD ran S steps from A₀ = a₀I (`init`), not to stationarity. As for
    Langevin, the exact mean offset of E[A_k] (`sgd_mean_score`, a function of Σ̂, so also inside the 1/N
    term) gives sgd_mean_offset, part of optimization, and the τ term uses the transient covariance of
    `level_sgd_transient` around the mean scores.
    The dict has the keys of `gsm.theory.langevin.langevin_prediction` (floats, kernels (d, d), diagnostics).
    """
    lam = _check_spectrum(lam)
    d = lam.numel()
    n = _check("n", n, low=1, integer=True, allow_none=True)
    tau = _check("tau", tau, low=0)
    b = _check("batch_size", batch_size, low=1, integer=True)
    M = _check("particles", particles, low=1, integer=True, allow_none=True)
    budget = _sgd_budget(sgd_steps, tau, b, init, symmetric)
    h, H1, H2 = ddpm_divided_differences(lam, chain, init_var, budget)    # h: with the mean scores of the budget
    rho, W = bures_second_order_weights(lam, h)
    bias_per = (lam.sqrt() - h.sqrt()) ** 2
    out, bias_opt = _bias_terms(lam, chain, init_var, final)
    K_N = kernel_n(lam, H1, H2, rho, W)
    out["generalization"] = float(K_N.sum()) / n if n is not None else 0.0
    out["sgd_mean_offset"] = float(bias_per.sum()) - bias_opt if budget is not None else 0.0
    K_tau = _tau_kernel(lam, chain, b, init_var, symmetric, tau, budget)
    out["optimization"] = out["sgd_mean_offset"] + tau * float(K_tau.sum())
    K_M = kernel_m(h, W)
    out["particles"] = float(K_M.sum()) / M if M is not None else 0.0
    out["total"] = bias_opt + out["generalization"] + out["optimization"] + out["particles"]
    eps_tau, warnings = _diagnostics(lam, chain, n, tau, b)
    out.update(kernel_n=K_N, kernel_tau=K_tau, kernel_m=K_M, bias_per_eigenvalue=bias_per, sampler_variance=h,
               eigenvalues=lam, eps_tau=eps_tau, d_over_n=d / n if n is not None else 0.0, warnings=warnings)
    return out
