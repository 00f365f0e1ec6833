"""Stability boundaries from first principles (issue 17): each limit gsm uses is compared with the one
derived here from the update rule itself, by the exact second-moment recursion, on both sides.

* ULA, x_{k+1} = P x_k + √(2γ) ξ_k with P = I − γA: the covariance obeys C_{k+1} = P C Pᵀ + 2γI, a linear
  map C ↦ P C Pᵀ whose matrix is P ⊗ P. It has a finite limit iff ρ(P ⊗ P) < 1. The test finds γ* where
  ρ = 1 by bisection on the eigenvalues of that d²×d² matrix, and iterates the recursion on both sides.
* DSM-SGD on a linear score, one noise level, batch b, online data y ~ N(0, M), M = Σ + σ²I (note §2):
  Δ_{k+1} = Δ_k G_k − τΞ_k, G_k = I − τσ²Ŷ_k, Ŷ_k = (1/b) Σ_batch y yᵀ, noise Ξ ⊥ Ŷ exciting every
  entry. Each row pair's second moment P_rs = E[δ_r δ_sᵀ] obeys P ↦ E[G P G] (+ noise), a linear map
  whose d²×d² matrix E[G ⊗ G] is written here from Isserlis' theorem, E[y_i y_j y_k y_l] =
  M_ij M_kl + M_ik M_jl + M_il M_jk, and independence of the b samples. Mean-square stable iff its
  spectral radius is < 1; τ* is found by bisection.
Nothing here calls gsm.theory's formulas to get a reference."""
import pytest
import torch

from gsm.theory.langevin import langevin_unstable
from gsm.training.objectives import sgd_mean_square_stable
from gsm.pipeline.validate import ConfigError, sgd_tau_limit, validate_config

F64 = torch.float64


def bisect(stable, hi: float, iters: int = 100) -> float:
    """The boundary of a monotone `stable(x)` (True below, False above) in (0, hi]; hi doubled until unstable."""
    while stable(hi):
        hi *= 2
    lo = 0.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if stable(mid) else (lo, mid)
    return lo


# ------------------------------------------------------------------------------------------- ULA

def ula_radius(A: torch.Tensor, gamma: float) -> float:
    """ρ(P ⊗ P), P = I − γA: the growth rate of C_{k+1} = P C Pᵀ + 2γI."""
    P = torch.eye(A.shape[-1], dtype=F64) - gamma * A
    return float(torch.linalg.eigvals(torch.kron(P, P)).abs().max())


def ula_trace_after(A: torch.Tensor, gamma: float, steps: int) -> float:
    """tr C_K of the recursion itself, from C_0 = I."""
    d = A.shape[-1]
    P = torch.eye(d, dtype=F64) - gamma * A
    C = torch.eye(d, dtype=F64)
    for _ in range(steps):
        C = P @ C @ P.T + 2 * gamma * torch.eye(d, dtype=F64)
    return float(C.trace())


@pytest.mark.parametrize("lam,sigma", [([0.25, 0.5, 1.0, 2.0], 0.5), ([0.05, 1.0, 3.0], 0.1), ([0.125, 0.3], 1.0)])
def test_langevin_gamma_bound_of_validation_is_where_the_exact_score_chain_stops_having_a_limit(compose_cfg, lam, sigma):
    """validate_config rejects sampler.gamma exactly from the γ* where ULA with the exact score of the
    σ-smoothed target, A* = (Σ + σ²I)⁻¹, stops being mean-square stable: γ = 0.99γ* is accepted and its
    recursion converges, γ = 1.01γ* is a ConfigError and its recursion grows."""
    A = torch.linalg.inv(torch.diag(torch.tensor(lam, dtype=F64)) + sigma ** 2 * torch.eye(len(lam), dtype=F64))
    g_star = bisect(lambda g: ula_radius(A, g) < 1, 0.1)
    spec = [f"data=custom", f"data.dim={len(lam)}", f"data.spectrum.eigenvalues=[{','.join(map(str, lam))}]",
            f"train.sigma={sigma}"]
    below, above = 0.99 * g_star, 1.01 * g_star
    validate_config(compose_cfg(*spec, f"sampler.gamma={below}"))
    with pytest.raises(ConfigError, match=r"^sampler\.gamma must be < "):
        validate_config(compose_cfg(*spec, f"sampler.gamma={above}"))
    K = 3000
    t_below, t_below_2k = ula_trace_after(A, below, K), ula_trace_after(A, below, 2 * K)
    assert abs(t_below_2k - t_below) < 1e-6 * t_below           # converged: a stationary law exists
    assert ula_trace_after(A, above, K) > 1e6 * t_below          # (1.01)^(2·3000)·... : grows without bound


def test_langevin_unstable_for_a_non_symmetric_score_is_the_second_moment_boundary():
    """A learned A is not symmetric: its eigenvalues are complex. `langevin_unstable` flags γ exactly
    from the γ* of the recursion's growth rate ρ(P ⊗ P) = 1, on both sides."""
    g = torch.Generator().manual_seed(3)
    d = 5
    A = torch.eye(d, dtype=F64) + 0.6 * torch.randn(d, d, generator=g, dtype=F64) / d ** 0.5
    assert torch.linalg.eigvals(A).real.min() > 0 and torch.linalg.eigvals(A).imag.abs().max() > 0.05
    g_star = bisect(lambda gam: ula_radius(A, gam) < 1, 0.1)
    assert not langevin_unstable(A, 0.999 * g_star) and langevin_unstable(A, 1.001 * g_star)
    assert ula_trace_after(A, 1.01 * g_star, 4000) > 1e6 * ula_trace_after(A, 0.99 * g_star, 4000)


# ------------------------------------------------------------------------------------------- SGD

def sgd_radius(lam, sigma: float, tau: float, b: int) -> float:
    """Spectral radius of P ↦ E[G P G], G = I − τσ²Ŷ, Ŷ = (1/b) Σ_{i≤b} y_i y_iᵀ, y_i ~ N(0, M) i.i.d.
    E[Ŷ ⊗ Ŷ] = (1 − 1/b) M ⊗ M + (1/b) E[yyᵀ ⊗ yyᵀ] (distinct samples are independent), the latter
    by Isserlis. Index layout: E[G_ij G_kl] as a 4-tensor; (G P G)_il = Σ_jk G_ij P_jk G_kl."""
    M = torch.diag(torch.as_tensor(lam, dtype=F64) + sigma ** 2)
    I = torch.eye(M.shape[0], dtype=F64)
    outer = lambda X, Y: torch.einsum("ij,kl->ijkl", X, Y)
    yyyy = outer(M, M) + torch.einsum("ik,jl->ijkl", M, M) + torch.einsum("il,jk->ijkl", M, M)
    YY = (1 - 1 / b) * outer(M, M) + yyyy / b
    c = tau * sigma ** 2
    GG = outer(I, I) - c * (outer(M, I) + outer(I, M)) + c ** 2 * YY
    d = M.shape[0]
    return float(torch.linalg.eigvals(GG.permute(0, 3, 1, 2).reshape(d * d, d * d)).abs().max())


SGD_CASES = [([1.0, 0.5, 0.25], 0.5, 1), ([1.0, 0.5, 0.25], 0.5, 2), ([2.0], 1.0, 1), ([1.0, 1e-3, 0.3, 4.0], 0.3, 4),
             ([1.0, 0.5], 1.0, 8), ([0.2] * 6, 0.7, 1)]


@pytest.mark.parametrize("lam,sigma,b", SGD_CASES)
def test_sgd_tau_limit_is_the_mean_square_boundary_of_the_update_rule(lam, sigma, b):
    """gsm.pipeline.validate.sgd_tau_limit (the warning's τ limit) and gsm.training.objectives.sgd_mean_square_stable (used by
    the theory and the advisor) against τ* of the recursion written above, on both sides."""
    tau_star = bisect(lambda t: sgd_radius(lam, sigma, t, b) < 1, 0.1)
    one, s = torch.ones(1, dtype=F64), torch.tensor([sigma], dtype=F64)
    limit, _ = sgd_tau_limit(torch.tensor(lam, dtype=F64), one, s, b)
    assert limit == pytest.approx(tau_star, rel=1e-9)
    for side, stable in ((0.99, True), (1.01, False)):
        tau = side * tau_star
        assert (sgd_radius(lam, sigma, tau, b) < 1) == stable                  # the reference itself
        assert sgd_mean_square_stable(torch.tensor(lam, dtype=F64), sigma=sigma, tau=tau, batch_size=b) == stable
