"""CFM-SGD (issue 23): the τ term and the finite budget of `gsm.training.flow_matching.CFM` against the
exact second-moment recursion of the SGD iterate, written here from the gradient's definition.

At one level t (α = t, s = 1 − t, each sample at the level with probability 1/L) a sample is x₁ ~ N(0, Σ),
x₀ ~ N(0, I), y = αx₁ + s x₀, u = x₁ − x₀, and the per-sample gradient of ½‖−By − u‖² is G = (By + u)yᵀ.
With w = (y, u) jointly Gaussian of covariance K (built below from Σ and the path alone) and B̃ = [B, I],
G_ri = (B̃w)_r w_i, so E[G | B] = B̃K_{·y} and E[G_ri G_sj | B] = Σ_pq B̃_rp B̃_sq E[w_p w_i w_q w_j] (Isserlis).
One step with batch b, B' = B − (τ/b)Σ_j 1_j G_j, maps (E[B], E[B ⊗ B]) affinely; its fixed point is the
exact stationary law and its S-th power the exact law after S steps, at every order in τ. The code's
first-order formulas must agree with it to O(τ) relative.
"""
import numpy as np
import pytest
import torch

from gsm.training.flow_matching import CFM
from gsm.training.objectives import DSM, SGDBudget

F64 = torch.float64
LAM = np.array([0.4, 2.5])


def path_covariance(lam, t, level=None):
    """Cov of w = (y, u), y = t x₁ + (1 − t)x₀ (level (a, s): y = a x₁ + s x₀), u = x₁ − x₀, in Σ's
    eigenbasis: (2d, 2d)."""
    S, I = np.diag(lam), np.eye(len(lam))
    a, s = (t, 1 - t) if level is None else level
    Kyy, Kyu, Kuu = a * a * S + s * s * I, a * S - s * I, S + I
    return np.block([[Kyy, Kyu], [Kyu.T, Kuu]])


def sgd_step_moments(lam, t, L, tau, b, level=None):
    """The exact one-step map of (E[B] (d, d), E[B_ri B_sj] (d, d, d, d)) as (T, c): x' = T x + c."""
    d = len(lam)
    K = path_covariance(lam, t, level)
    T4 = (np.einsum("pi,qj->piqj", K, K) + np.einsum("pq,ij->piqj", K, K) + np.einsum("pj,iq->piqj", K, K))
    Ky, T4y = K[:, :d], T4[:, :d, :, :d]

    def step(x):
        mean, P = x[:d * d].reshape(d, d), x[d * d:].reshape(d, d, d, d)
        Bm = np.concatenate([mean, np.eye(d)], 1)                                  # E[B̃]
        Q = np.zeros((d, 2 * d, d, 2 * d))                                         # E[B̃_rp B̃_sq]
        Q[:, :d, :, :d] = P
        Q[:, :d, :, d:] = np.einsum("ri,sq->risq", mean, np.eye(d))
        Q[:, d:, :, :d] = np.einsum("rp,sj->rpsj", np.eye(d), mean)
        Q[:, d:, :, d:] = np.einsum("rp,sq->rpsq", np.eye(d), np.eye(d))
        g_mean = Bm @ Ky
        BG = np.einsum("risq,qj->risj", Q[:, :d], Ky)                              # E[B_ri g_sj]
        GB = np.einsum("rpsj,pi->risj", Q[:, :, :, :d], Ky)                        # E[g_ri B_sj]
        GG = np.einsum("rpsq,pi,qj->risj", Q, Ky, Ky)                              # E[g_ri g_sj]
        G2 = np.einsum("rpsq,piqj->risj", Q, T4y)                                   # E[G_ri G_sj]
        P2 = (P - tau / L * (BG + GB)
              + tau ** 2 * (G2 / (b * L) + (1 - 1 / b) * GG / L ** 2))
        return np.concatenate([(mean - tau / L * g_mean).ravel(), P2.ravel()])

    n = d * d + d ** 4
    c = step(np.zeros(n))
    T = np.stack([step(e) - c for e in np.eye(n)], 1)
    return T, c


def exact_law(lam, t, L, tau, b, steps=None, b0=0.0, level=None):
    """Exact E[B], Var(B_ri), Cov(B_ri, B_ir) after `steps` steps from B₀ = b₀I (None: stationary)."""
    d = len(lam)
    T, c = sgd_step_moments(lam, t, L, tau, b, level)
    if steps is None:
        x = np.linalg.solve(np.eye(len(c)) - T, c)
    else:
        aug = np.block([[T, c[:, None]], [np.zeros((1, len(c))), np.ones((1, 1))]])
        B0 = b0 * np.eye(d)
        x0 = np.concatenate([B0.ravel(), np.einsum("ri,sj->risj", B0, B0).ravel(), [1.0]])
        x = (np.linalg.matrix_power(aug, steps) @ x0)[:-1]
    mean, P = x[:d * d].reshape(d, d), x[d * d:].reshape(d, d, d, d)
    var = np.einsum("riri->ri", P) - mean ** 2
    cross = np.einsum("riir->ri", P) - mean * mean.T
    return mean, var, cross


def relaxation_steps(lam, t, L, tau):
    """L/(τ m_min): steps per relaxation time of the slowest direction at the level (drift τm/L a step)."""
    return L / (tau * float(((1 - t) ** 2 + t * t * lam).min()))


TIMES = [0.0, 0.3, 0.7, 1.0]


@pytest.mark.parametrize("t", TIMES)
@pytest.mark.parametrize("b", [1, 3])
def test_stationary_covariance_is_the_exact_recursions_to_first_order(t, b):
    """Stationary Var(Δ_ri) = τλ_r/(2bm_r) at τ = 2e-3 (first-order error ~0.3 %): within 1.5 % of the exact
    fixed point, cross-covariances 0; DSM's residual variance α²λ/m in its place is off by > 10 % (t < 1;
    at t = 1, α = 1, the two coincide)."""
    L, tau, ts = 4, 2e-3, torch.tensor(TIMES, dtype=F64)
    mean, var, cross = exact_law(LAM, t, L, tau, b)
    l = TIMES.index(t)
    pvar, pcross = (v[l].numpy() for v in CFM().fluctuations(torch.tensor(LAM), ts, 1 - ts, tau, b))
    np.testing.assert_allclose(mean, np.diag(CFM().target(torch.tensor(LAM), ts, 1 - ts)[l].numpy()), atol=1e-10)
    np.testing.assert_allclose(pvar, var, rtol=0.015)
    np.testing.assert_allclose(pcross, 0 * pvar)
    assert abs(cross - np.diag(np.diag(cross))).max() < 1e-3 * var.max()
    m = t * t * LAM + (1 - t) ** 2
    dsm_like = tau * t * t * LAM / (2 * b * m)
    assert t == 1.0 or np.abs(dsm_like[:, None] / var - 1).max() > 0.1


def vp_level(t, T=1.0, eps=1e-3, beta_min=0.1, beta_max=20.0):
    """The VP path's level (a, b) at flow time t, from sampler=vp's schedule: τ = T − t(T − ε),
    a = e^{−B(τ)/2}, b = √(1 − a²), B(τ) = β_min τ + (β_max − β_min)τ²/2 (a + b ≠ 1)."""
    tau = T - t * (T - eps)
    a = np.exp(-0.5 * (beta_min * tau + 0.5 * (beta_max - beta_min) * tau * tau))
    return float(a), float(np.sqrt(1 - a * a))


@pytest.mark.parametrize("t", [0.3, 0.6, 0.85])
def test_the_tau_term_follows_the_vp_path(t):
    """At a VP-path level (a, b), a + b = 1.08, 1.34, 1.35, the stationary Var(Δ_ri) = τλ_r(a + b)²/(2bm_r)
    (docs/theory.md §14.3) is within 1.5 % of the exact recursion's fixed point, and after one relaxation time from B₀ = 0
    within 1.5 %, and ε_τ = max Var(Δ_rr)m_r²; the linear path's λ_r/m_r in its place is off by > 10 %."""
    L, tau, b = 3, 2e-3, 2
    a, s = vp_level(t)
    al, sl = torch.tensor([a], dtype=F64), torch.tensor([s], dtype=F64)
    _, var, _ = exact_law(LAM, t, L, tau, b, level=(a, s))
    pvar, _ = CFM().fluctuations(torch.tensor(LAM), al.repeat(L), sl.repeat(L), tau, b)
    np.testing.assert_allclose(pvar[0].numpy(), var, rtol=0.015)
    m = a * a * LAM + s * s
    assert np.abs(tau * LAM / (2 * b * m) / var[:, 0] - 1).max() > 0.1
    eps = CFM().eps_tau(torch.tensor(LAM), al, sl, tau, b)
    assert eps == pytest.approx(float((np.diag(var) * m ** 2).max()), rel=0.015)      # ε_τ = max Var(Δ_rr)·m_r²
    S = int(L / (tau * float(m.min())))
    _, var_S, _ = exact_law(LAM, t, L, tau, b, steps=S, level=(a, s))
    budget = SGDBudget(steps=S, tau=tau, batch_size=b, init="zeros")
    pvar_S, _ = CFM().fluctuations(torch.tensor(LAM), al.repeat(L), sl.repeat(L), tau, b, budget)
    np.testing.assert_allclose(pvar_S[0].numpy(), var_S, rtol=0.015)


@pytest.mark.parametrize("t", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("init, b0", [("zeros", 0.0), ("identity", 1.0)])
def test_finite_budget_is_the_exact_recursions_law(t, init, b0):
    """After S = one relaxation time of the slowest direction (far from stationary): the mean is exact
    (1e-10), and Var(Δ_ri), Cov(Δ_ri, Δ_ir) (additive noise and the mean offset's multiplicative noise) are
    within 3 % of the exact recursion at τ = 2e-3, b = 2; from B₀ = 0 (a mean offset μ0 = −b* of order 1),
    without the multiplicative part they are not."""
    L, tau, b, ts = 3, 2e-3, 2, torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    l = [0.0, 0.5, 1.0].index(t)
    S = round(relaxation_steps(LAM, t, L, tau))
    mean, var, cross = exact_law(LAM, t, L, tau, b, S, b0)
    budget = SGDBudget(S, tau, b, init)
    lam = torch.tensor(LAM)
    np.testing.assert_allclose(CFM().mean(lam, ts, 1 - ts, budget)[l].numpy(), np.diag(mean), rtol=1e-10)
    assert abs(mean - np.diag(np.diag(mean))).max() < 1e-12
    pvar, pcross = (v[l].numpy() for v in CFM().fluctuations(lam, ts, 1 - ts, tau, b, budget))
    scale = var.max()
    np.testing.assert_allclose(pvar, var, rtol=0.03)
    np.testing.assert_allclose(pcross, cross, rtol=0.03, atol=0.01 * scale)
    additive, _ = (v[l].numpy() for v in CFM().fluctuations(lam, ts, 1 - ts, tau, b,
                                                              SGDBudget(S, tau, b, "optimum")))
    if init == "zeros":
        assert np.abs(additive / var - 1).max() > 0.1 or np.abs(cross - np.diag(np.diag(cross))).max() > 0.1 * scale


def test_the_finite_budget_mean_is_exact_at_any_step():
    """E[B_S] = B* + (B₀ − B*)(I − τM/L)^S is exact for any τ (the gradient is affine in B): τ = 0.2, S = 7."""
    ts, lam = torch.tensor([0.0, 0.4, 1.0], dtype=F64), torch.tensor(LAM)
    for l, t in enumerate(ts.tolist()):
        mean, _, _ = exact_law(LAM, t, 3, 0.2, 1, 7, 1.0)
        got = CFM().mean(lam, ts, 1 - ts, SGDBudget(7, 0.2, 1, "identity"))[l].numpy()
        np.testing.assert_allclose(got, np.diag(mean), rtol=1e-10)


def test_score_series_with_a_budget_is_the_matrix_function_on_a_jordan_block():
    """The budget's mean as a series in Σ̂'s eigenvalue equals `score_function` on J = μI + N (N the shift)."""
    mu = torch.tensor([0.4, 2.0], dtype=F64)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    budget = SGDBudget(40, 0.05, 2, "identity")
    f = CFM().score_series(mu, t, 1 - t, budget, order=3)
    N = torch.diag(torch.ones(2, dtype=F64), 1)
    for i, m in enumerate(mu.tolist()):
        B = CFM().score_function(m * torch.eye(3, dtype=F64) + N, t, 1 - t, budget)
        ref = sum(f[:, i, r].view(-1, 1, 1) * torch.linalg.matrix_power(N, r) for r in range(3))
        torch.testing.assert_close(B, ref, rtol=1e-10, atol=1e-12)


def test_the_mean_square_stability_limit_is_the_exact_recursions():
    """CFM.mean_square_stable (one level, b = 1) switches where the exact recursion's spectral radius
    crosses 1 (within 2 %)."""
    t, lam = 0.5, torch.tensor(LAM)
    one = torch.tensor([t], dtype=F64)
    taus = np.linspace(0.05, 3.0, 300)
    stable = np.array([CFM().mean_square_stable(lam, one, 1 - one, tau, 1) for tau in taus])
    radius = np.array([np.abs(np.linalg.eigvals(sgd_step_moments(LAM, t, 1, tau, 1)[0])).max() for tau in taus])
    limit_code, limit_exact = taus[~stable][0], taus[radius >= 1][0]
    assert limit_code == pytest.approx(limit_exact, rel=0.02)


def test_cfm_and_dsm_share_the_level_formula_but_not_the_noise():
    """CFM-SGD's stationary variance τλ/(2bm) is DSM's τα²λ/(2bm) divided by α²: the target x₁ − x₀ carries
    the data, and at t = 0 (α = 0) CFM still learns (B₀ = I) where DSM's would not move."""
    lam, ts = torch.tensor(LAM), torch.tensor([0.0, 0.5], dtype=F64)
    c, d = CFM().fluctuations(lam, ts, 1 - ts, 0.01, 2)[0], DSM().fluctuations(lam, ts, 1 - ts, 0.01, 2)[0]
    torch.testing.assert_close(d[1], c[1] * 0.25)
    assert (c[0] > 0).all() and (d[0] == 0).all()


def test_a_dsm_only_start_is_refused_in_one_line():
    """init=noise (a₀ = 1/s², DSM's score of N(0, s²I)) has no velocity meaning."""
    ts = torch.tensor([0.0, 0.5], dtype=F64)
    with pytest.raises(ValueError, match=r"^init must be one of zeros \| identity \| optimum for objective cfm, "
                                         r"got noise$"):
        CFM().mean(torch.tensor(LAM), ts, 1 - ts, SGDBudget(10, 0.01, 1, "noise"))
