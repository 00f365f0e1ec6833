"""The prediction of E[W2²] in the Fourier-diagonal case (data.kind=texture, docs/theory.md §13): every
frequency ω is a scalar model with eigenvalue λ(ω) and weight `multiplicity`, so the kernels of the
full-matrix theory reduce to their diagonals, Σ_ω instead of Σ_ij; the periodogram's fourth moment κ
enters the 1/N and τ terms (`gsm.training.objectives.DSM.circulant_variance`). The sampler's law map is
its step map's (`gsm.theory.law.ChainLaw`): h and its λ-derivatives from the chain's jets, the τ cells
from its diagonal jets. Also the Bures distance between circulants (`fourier_bures_wasserstein2`)."""
from __future__ import annotations

import torch

from gsm.data.texture import kappa, multiplicity
from gsm.theory.bures import bures_wasserstein2_commuting
from gsm.theory.law import ChainLaw
from gsm.training.objectives import DSM, SGDBudget

F64 = torch.float64


def fourier_bures_wasserstein2(lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """B²(Σ, C) for circulant Σ, C with half-plane eigenvalues λ, c (..., n, n//2+1): the commuting
    formula Σ_ω (√λ(ω) − √c(ω))² over the full grid (exact). → (...)."""
    w = multiplicity(lam.shape[-2], lam.device)
    return bures_wasserstein2_commuting((w * lam).flatten(-2), (w * c).flatten(-2))  # w(√λ−√c)² = (√wλ−√wc)²


# ---------------------------------------------------------------------------------------- theory

def bures_diagonal_weights(lam: torch.Tensor, c: torch.Tensor):
    """ρ = 1 − √(λ/c) and W = W(λ,λ) = √λ/(2c^{3/2}) of the theory note §4 on the diagonal:
    (√λ − √(c+e))² = (√λ − √c)² + ρ e + ½ W e² + O(e³)."""
    return 1 - (lam / c).sqrt(), lam.sqrt() / (2 * c ** 1.5)


def _warnings(tau: float, eps_tau: float) -> list[str]:
    """Where the first-order τ term may not hold (eps_tau > 0.005)."""
    if tau and eps_tau > 0.005:
        return [f"eps_tau = {eps_tau:.3g} > 0.005: the first-order τ term may be off by more than ~5% "
                f"(theory note §5.5)"]
    return []


def fourier_prediction(lam: torch.Tensor, sampler, *, n=None, sigma=None, tau: float = 0.0, batch_size: int = 1,
                       particles=None, sgd_steps: int | None = None, init: str = "zeros") -> dict:
    """Predicted E[W2²(N(0,Σ), law of the sampler output)] for the Fourier-diagonal model (docs/textures.md).
    Per frequency ω (full grid; half-plane entries weighted by their multiplicity):

        E[W2²] = Σ_ω (√λ − √h(λ))²
               + (1/N) Σ_ω κ λ² [½ W h'(λ)² + ½ ρ h''(λ)]                  (periodogram: Var P̂ = κλ²/N)
               + τ Σ_ω Σ_l V_l [½ W (∂h/∂a_l)² + ½ ρ ∂²h/∂a_l²]           (V_l: `DSM.circulant_variance`)
               + (1/M) Σ_ω ½ κ W h²                                        (particle periodogram)

    h(λ) the output variance with the exact score a*_l = 1/(α_l²λ + s_l²), through the sampler's step map,
    ρ = 1 − √(λ/h), W = √λ/(2h^{3/2}). Each kernel is (κ/2) × the diagonal K(λ_ω, λ_ω) of the full-matrix
    kernel: the off-diagonal fluctuations (Wishart, SGD) are absent, and a complex frequency's periodogram
    or SGD noise has half the variance of a full-matrix diagonal entry (ω and −ω are one real parameter).
    lam: (n, n//2+1). σ: Langevin's DSM noise level (the levels of a diffusion sampler are its own).

    sgd_steps = k (with tau > 0): SGD ran k steps from a₀ (`init`), not to stationarity: the exact mean
    E[a_k] = a* + (a₀ − a*) r^k, r = 1 − τs²m/L (`DSM.mean`), whose exact effect is the term "transient";
    the τ term uses Var(Δ_k) = τV(1 − r^{2k}) (first order; the multiplicative noise of the mean offset is
    neglected)."""
    lam = lam.to(F64)
    k, w = kappa(lam.shape[-2]).flatten(), multiplicity(lam.shape[-2]).flatten()
    alphas, stds = sampler.noise_levels(sigma)
    flat, objective, law = lam.flatten(), DSM(), ChainLaw(sampler.chain, sampler.init_var)
    a_opt = objective.target(flat, alphas, stds)                                    # (L, F)
    H = law.series(flat, objective, alphas, stds)                                  # h and its λ-series
    h = H[:, 0]
    rho, W = bures_diagonal_weights(flat, h)
    out = {"bias": float((w * (flat.sqrt() - h.sqrt()) ** 2).sum()), "transient": 0.0}
    K_N = k * flat ** 2 * (0.5 * W * H[:, 1] ** 2 + rho * H[:, 2])
    V = objective.circulant_variance(flat, alphas, stds, k, batch_size)               # (L, F)
    finite = bool(tau) and sgd_steps is not None
    if finite:
        budget = SGDBudget(int(sgd_steps), float(tau), int(batch_size), init)
        c_mean = law.variance(objective.mean(flat, alphas, stds, budget))
        out["transient"] = float((w * ((flat.sqrt() - c_mean.sqrt()) ** 2 - (flat.sqrt() - h.sqrt()) ** 2)).sum())
        s2 = stds.to(F64).pow(2).view(-1, 1)
        m = alphas.to(F64).pow(2).view(-1, 1) * flat + s2
        V = V * (1 - (1 - tau * s2 * m / alphas.numel()) ** (2 * int(sgd_steps)))
    K_tau = law.diagonal_tau_cells(flat, a_opt, V, rho, W)
    K_M = 0.5 * k * W * h ** 2
    out["generalization"] = float((w * K_N).sum()) / n if n else 0.0
    out["optimization"] = float(tau * (w * K_tau).sum()) if tau else 0.0
    out["particles"] = float((w * K_M).sum()) / particles if particles else 0.0
    out["total"] = out["bias"] + out["transient"] + out["generalization"] + out["optimization"] + out["particles"]
    x = alphas.to(F64).pow(2).view(-1, 1) * flat                                    # ε_τ with the κ of §13
    out["eps_tau"] = float(tau * (k * x * (x + stds.to(F64).pow(2).view(-1, 1))).max() / (4 * batch_size))
    out["warnings"] = _warnings(tau, out["eps_tau"])
    shape = lam.shape
    out.update(kernel_n=K_N.view(shape), kernel_tau=K_tau.view(shape), kernel_m=K_M.view(shape),
               output_variance=h.view(shape), eigenvalues=lam,
               modelled={"objective": objective.name, "bias": "exact", "sgd_budget": finite,
                         "optimization": "first order in τ" + (", finite budget: exact mean, additive-noise "
                                                              "fluctuations" if finite else "")})
    return out
