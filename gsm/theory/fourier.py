"""The prediction of E[W2²] in the Fourier-diagonal case (data.kind=texture, docs/theory.md §13): every
frequency ω is a scalar model with eigenvalue λ(ω) and weight `multiplicity`, so the kernels of the
full-matrix theory reduce to their diagonals, Σ_ω instead of Σ_ij; the periodogram's fourth moment κ
enters the 1/N and τ terms (`sgd_variance_fourier`). Also the Bures distance between circulants
(`fourier_bures_wasserstein2`)."""
from __future__ import annotations

import torch

from gsm.data.texture import kappa, multiplicity
from gsm.samplers.fourier import sampler_variance
from gsm.samplers.reverse_chain import grid_coefficients
from gsm.scores.fourier import dsm_optimum_fourier, initial_coefficients
from gsm.theory.bures import bures_wasserstein2_commuting

_F64 = torch.float64


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


def _derivatives(f, x: torch.Tensor, chunk: int = 1 << 14):
    """f(x), f'(x), f''(x) of an elementwise map f: (F,) → (F,) (each output entry depends on its own
    input entry only), by reverse-mode AD of Σf and Σf' (chunked over the entries)."""
    outs = []
    for xs in x.split(chunk):
        with torch.enable_grad():
            xs = xs.detach().clone().requires_grad_(True)
            v = f(xs)
            g, = torch.autograd.grad(v.sum(), xs, create_graph=True)
            h, = torch.autograd.grad(g.sum(), xs)
        outs.append((v.detach(), g.detach(), h))
    return tuple(torch.cat(t) for t in zip(*outs))


def sgd_variance_fourier(lam, alphas, stds, *, batch_size: int = 1, exact_tau: float | None = None):
    """Stationary variance per unit τ of Δ = a − a* at each level and frequency, first order in τ:

        Var(Δ_l(ω)) = τ κ(ω) α_l²λ / (4b(α_l²λ + s_l²)),

    half the full-matrix diagonal v (note §2.2) at a complex frequency (κ = 1), equal at a real one
    (κ = 2). exact_tau (L = 1 only): the exact variance for online Gaussian data, per unit τ,
    κU/(2bs²(2 − τs²m(1 + κ/b))), U = s²λ/m, m = λ + s² (each frequency is a scalar recursion).
    lam (n, h), alphas/stds (L,) → (L, n, h)."""
    k = kappa(lam.shape[-2], lam.device)
    a2 = alphas.to(_F64).pow(2).view(-1, 1, 1)
    s2 = stds.to(_F64).pow(2).view(-1, 1, 1)
    m = a2 * lam + s2
    b = float(batch_size)
    if exact_tau is None:
        return k * a2 * lam / (4 * b * m)
    if alphas.numel() != 1:
        raise ValueError(f"exact_tau needs a single noise level, got {alphas.numel()} levels")
    U = s2 * a2 * lam / m
    return k * U / (2 * b * s2 * (2 - exact_tau * s2 * m * (1 + k / b)))


def _chain_tau_cells(sampler, lam, a_opt, var, rho, W, chunk: int = 1 << 22):
    """Σ_k V_k [½ρ ∂²v/∂a_k² + ½W (∂v/∂a_k)²] for a DDPM/DDIM chain: with ℓ_k the product of the later
    maps, c_k the variance at t_k and f_k = c_k − g_k a_k, ∂v/∂a_k = −2g_kℓ_k²f_kc_k and
    ∂²v/∂a_k² = 2g_k²ℓ_k²c_k (the diagonal of gsm.theory.diffusion.ddpm_tau_kernel). Chunked over ω."""
    ch = sampler.reverse_chain
    A, V = grid_coefficients(ch, a_opt), grid_coefficients(ch, var)            # (K+1, F)
    F = A.shape[-1]
    out = torch.empty(F, dtype=_F64)
    step = max(1, chunk // (ch.K + 1))
    for s in range(0, F, step):
        a, v = A[:, s:s + step], V[:, s:s + step]
        f = ch.c.view(-1, 1) - ch.g.view(-1, 1) * a
        c = torch.empty_like(a)
        x = torch.full_like(a[0], float(sampler.init_var))
        for k in range(ch.K, -1, -1):
            c[k] = x
            x = f[k] ** 2 * x + ch.q[k]
        ell2 = torch.cumprod(torch.cat([torch.ones_like(f[:1]), f[:-1]]), 0) ** 2
        g2 = ch.g.view(-1, 1) ** 2
        out[s:s + step] = (v * g2 * ell2 * (rho[s:s + step] * c + 2 * W[s:s + step] * ell2 * f ** 2 * c ** 2)).sum(0)
    return out


def _sgd_transient(sampler, a_opt, alphas, stds, m, tau: float, sgd_steps: int, init: str):
    """After k = `sgd_steps` SGD steps from a₀ (`init`): the output variance of the mean score
    E[a_k] = a* + (a₀ − a*) r^k, r = 1 − τs²m/L (a level sees a fraction 1/L of the samples), and r^{2k}."""
    r = 1 - tau * stds.to(_F64).pow(2).view(-1, 1) * m / alphas.numel()
    a_mean = a_opt + (initial_coefficients(init, alphas.numel(), stds).view(-1, 1) - a_opt) * r ** int(sgd_steps)
    return sampler_variance(sampler, a_mean.view(-1, 1, a_opt.shape[-1])).flatten(), r ** (2 * int(sgd_steps))


def _tau_kernel(sampler, flat, a_opt, V, rho, W):
    """K_τ per frequency (F,): Σ_l V_l [½W (∂v/∂a_l)² + ½ρ ∂²v/∂a_l²] of the sampler's map v."""
    if sampler.reverse_chain is not None:     # DDPM/DDIM: the τ cells exactly; Langevin: by derivatives
        return _chain_tau_cells(sampler, flat, a_opt, V, rho, W)
    _, c1, c2 = _derivatives(lambda x: sampler_variance(sampler, x.view(1, 1, -1)).flatten(), a_opt[0])
    return V[0] * (0.5 * W * c1 ** 2 + 0.5 * rho * c2)


def _warnings(tau: float, eps_tau: float) -> list[str]:
    """Where the first-order τ term may not hold (eps_tau > 0.005)."""
    if tau and eps_tau > 0.005:
        return [f"eps_tau = {eps_tau:.3g} > 0.005: the first-order τ term may be off by more than ~5% "
                f"(theory note §5.5)"]
    return []


def fourier_prediction(lam: torch.Tensor, sampler, *, n=None, sigma=None, tau: float = 0.0, batch_size: int = 1,
                       particles=None, sgd_steps: int | None = None, init: str = "zeros") -> dict:
    """Predicted E[W2²(N(0,Σ), law of the sampler output)] for the Fourier-diagonal model (README,
    "Textures"). Per frequency ω (full grid; half-plane entries weighted by their multiplicity):

        E[W2²] = Σ_ω (√λ − √h(λ))²
               + (1/N) Σ_ω κ λ² [½ W h'(λ)² + ½ ρ h''(λ)]                  (periodogram: Var P̂ = κλ²/N)
               + τ Σ_ω Σ_l V_l [½ W (∂v/∂a_l)² + ½ ρ ∂²v/∂a_l²]           (V_l: `sgd_variance_fourier`)
               + (1/M) Σ_ω ½ κ W h²                                        (particle periodogram)

    h(λ) = v(a*(λ)) the output variance with the exact score a*_l = 1/(α_l²λ + s_l²), v the sampler's
    per-frequency map, ρ = 1 − √(λ/h), W = √λ/(2h^{3/2}). Each kernel is (κ/2) × the diagonal
    K(λ_ω, λ_ω) of the full-matrix kernel of gsm.theory / gsm.diffusion: the off-diagonal
    fluctuations (Wishart, SGD) are absent, and a complex frequency's periodogram or SGD noise has
    half the variance of a full-matrix diagonal entry (ω and −ω are one real parameter).
    lam: (n, n//2+1). σ: Langevin's DSM noise level (the levels of a diffusion sampler are its own).

    sgd_steps = k (with tau > 0): SGD ran k steps from a₀ (`init`), not to stationarity. Each level is
    hit by a fraction 1/L of the samples, so E[a_k] = a* + (a₀ − a*) r^k, r = 1 − τs²m/L (m = α²λ + s²,
    population second moment), whose exact effect is the term "transient"; the τ term uses
    Var(Δ_k) = τV(1 − r^{2k}) (first order; the multiplicative noise of the mean offset is neglected).
    """
    lam = lam.to(_F64)
    nn_ = lam.shape[-2]
    w, k = multiplicity(nn_), kappa(nn_)
    alphas, stds = sampler.noise_levels(sigma)
    flat = lam.flatten()
    a_opt = dsm_optimum_fourier(lam, alphas, stds).flatten(-2)     # (L, F)
    h_fn = lambda x: sampler_variance(sampler, dsm_optimum_fourier(x.view(1, -1), alphas, stds)).flatten()
    h, h1, h2 = _derivatives(h_fn, flat)
    rho, W = bures_diagonal_weights(flat, h)
    kf, wf = k.flatten(), w.flatten()
    out = {"bias": float((wf * (flat.sqrt() - h.sqrt()) ** 2).sum())}
    K_N = kf * flat ** 2 * (0.5 * W * h1 ** 2 + 0.5 * rho * h2)
    V = sgd_variance_fourier(lam, alphas, stds, batch_size=batch_size).flatten(-2)     # (L, F)
    m = alphas.to(_F64).pow(2).view(-1, 1) * flat + stds.to(_F64).pow(2).view(-1, 1)   # (L, F)
    out["transient"] = 0.0
    if tau and sgd_steps is not None:
        c_mean, r2k = _sgd_transient(sampler, a_opt, alphas, stds, m, tau, sgd_steps, init)
        out["transient"] = float((wf * ((flat.sqrt() - c_mean.sqrt()) ** 2 - (flat.sqrt() - h.sqrt()) ** 2)).sum())
        V = V * (1 - r2k)
    K_tau = _tau_kernel(sampler, flat, a_opt, V, rho, W)
    K_M = 0.5 * kf * W * h ** 2
    out["generalization"] = float((wf * K_N).sum()) / n if n else 0.0
    out["optimization"] = float(tau * (wf * K_tau).sum()) if tau else 0.0
    out["particles"] = float((wf * K_M).sum()) / particles if particles else 0.0
    out["total"] = out["bias"] + out["transient"] + out["generalization"] + out["optimization"] + out["particles"]
    out["eps_tau"] = float(tau * (kf * alphas.to(_F64).pow(2).view(-1, 1) * flat * m).max() / (4 * batch_size))
    out["warnings"] = _warnings(tau, out["eps_tau"])
    shape = lam.shape
    out.update(kernel_n=K_N.view(shape), kernel_tau=K_tau.view(shape), kernel_m=K_M.view(shape),
               output_variance=h.view(shape), eigenvalues=lam)
    return out
