"""ULA (the unadjusted Langevin algorithm) for a linear score, in closed form (docs/theory.md §3, §5).

ULA x_{k+1} = x_k + γ s(x_k) + √(2γ) ξ_k with s(x) = −A x is the one-level linear chain
x ← (I − γA) x + √(2γ) ξ (`ula_chain`, the step map every law below derives from). Its closed forms are
the fast paths of `gsm.samplers.langevin.Langevin`, each tested equal to the chain's derived law:

* `langevin_covariance`: the exact law after K steps (or stationary) for any A, by binary doubling;
* `langevin_variance`: per eigenvalue, c_K = c_∞ + (1−γa)^{2K}(c₀ − c_∞), c_∞ = 1/(a(1 − γa/2));
* `tau_term_from_var`: the τ cells of the K-step (or stationary) law, in closed form;
* `ULALaw`: the law map (`gsm.theory.law`) built from them, and `ula_bias_terms` (noise, discretisation,
  mixing);
* `langevin_prediction`: the whole prediction (README's Python API), `gsm.theory.prediction` with the
  DSM objective, plus the research options (a bias term, the O(τ²) term, the particle mean).

Everything is in the eigenbasis of Σ (eigenvalues λ), float64; w2 values are squared distances.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gsm.algebra import DIAG
from gsm.theory.bures import bures_second_order_weights
from gsm.theory.chain import LinearChain, affine_step
from gsm.theory.law import opitz_divided_differences
from gsm.theory.prediction import check_spectrum, linear_prediction, w2_commuting
from gsm.training.objectives import DSM, INITS, SGDBudget

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# the chain and its laws

def ula_chain(gamma: float, steps: int) -> LinearChain:
    """ULA as its step map: K steps x ← (I − γA_0) x + √(2γ) ξ on one level."""
    step = lambda A, alg: affine_step(1.0, gamma, A(0), alg)
    return LinearChain([step] * int(steps), torch.full((int(steps),), 2 * gamma, dtype=F64), [[0]] * int(steps), 1)


def langevin_variance(a, gamma: float, steps: int | None = None, init_var=1.0) -> torch.Tensor:
    """ULA variance along an eigendirection of a symmetric score matrix with eigenvalue a (note §3),
    elementwise. Stationary (steps=None): c_∞ = 2γ/(1 − (1−γa)²) = 1/(a(1 − γa/2)). After K steps from
    N(0, c₀): c_K = r^K c₀ + 2γ Σ_{k<K} r^k, r = (1 − γa)², summed as 2γ(r^K − 1)/(r − 1) without
    cancellation: finite for every finite a, also at r = 1 (a = 0, an untrained score: c₀ + 2γK)."""
    a = torch.as_tensor(a, dtype=F64) if not torch.is_tensor(a) else a
    if steps is None:
        return 1.0 / (a * (1.0 - 0.5 * gamma * a))
    K = int(steps)
    rm1 = gamma * a * (gamma * a - 2)                          # r − 1
    ratio = torch.expm1(K * torch.log1p(rm1)) / rm1           # (r^K − 1)/(r − 1)
    ratio = torch.where(rm1 == 0, torch.full_like(rm1, float(K)), ratio)
    return (1 + rm1) ** K * init_var + 2 * gamma * ratio


def sandwich(P, C):
    """P C Pᵀ."""
    return P @ C @ P.transpose(-1, -2)


def lyapunov_sum(P: torch.Tensor, Q: torch.Tensor, K: int) -> torch.Tensor:
    """S_K = Σ_{k<K} P^k Q P^{kᵀ} by binary doubling (O(log K) products, any P, stable or not).
    P, Q: (..., d, d) → (..., d, d)."""
    S = torch.zeros_like(Q)
    Pa = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device).expand_as(P).clone()  # P^(terms in S)
    Pp, Sp = P, Q                                                                     # P^(2^j), S_(2^j)
    while K > 0:
        if K & 1:
            S = S + sandwich(Pa, Sp)
            Pa = Pa @ Pp
        K >>= 1
        if K:
            Sp = Sp + sandwich(Pp, Sp)
            Pp = Pp @ Pp
    return S


def power_and_geometric_sum(Q: torch.Tensor, K: int):
    """(Q^K, Σ_{k<K} Q^k) by binary doubling (O(log K) products; finite at ρ(Q) = 1, e.g. an untrained
    score). Q (..., n, n), any matrix (Opitz' bidiagonal blocks included)."""
    eye = torch.eye(Q.shape[-1], dtype=Q.dtype, device=Q.device).expand_as(Q)
    power, total = eye.clone(), torch.zeros_like(Q)             # Q^(terms so far), their sum
    Qp, Sp = Q, eye.clone()                                     # Q^(2^j), Σ_{k<2^j} Q^k
    while K > 0:
        if K & 1:
            total = total + power @ Sp
            power = power @ Qp
        K >>= 1
        if K:
            Sp = Sp + Qp @ Sp
            Qp = Qp @ Qp
    return power, total


def discrete_lyapunov(P: torch.Tensor, Q: torch.Tensor, max_doublings: int = 64) -> torch.Tensor:
    """C = Σ_{k≥0} P^k Q P^{kᵀ}, the solution of C = P C Pᵀ + Q for spectral radius ρ(P) < 1, by
    Smith's doubling (C ← C + P C Pᵀ, P ← P²) until P^(2^j) vanishes. Non-finite where ρ(P) ≥ 1."""
    C, Pj = Q.clone(), P.clone()
    for _ in range(max_doublings):
        C = C + sandwich(Pj, C)
        Pj = Pj @ Pj
        if not torch.isfinite(Pj).all() or Pj.abs().amax() < 1e-30:
            break
    bad = ~(Pj.abs().flatten(-2).amax(-1) < 1e-12)
    return torch.where(bad[..., None, None], torch.full_like(C, float("nan")), C)


def langevin_covariance(A: torch.Tensor, gamma: float, steps: int | None = None,
                        init_var: float = 1.0) -> torch.Tensor:
    """Exact covariance of ULA with s(x) = −A x after K = `steps` steps from N(0, init_var·I)
    (steps=None: the stationary law, NaN where ULA is unstable). A: (..., d, d) → (..., d, d) float64."""
    A = A.to(torch.promote_types(A.dtype, torch.float64))       # complex A too (Cauchy integrals, `tau_fourth_order`)
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    P = eye - gamma * A
    Q = (2 * gamma) * eye.expand_as(A)
    if steps is None:
        return discrete_lyapunov(P, Q)
    PK = torch.linalg.matrix_power(P, int(steps))
    return lyapunov_sum(P, Q, int(steps)) + init_var * PK @ PK.transpose(-1, -2)


def langevin_unstable(A: torch.Tensor, gamma: float) -> torch.Tensor:
    """ULA is unstable when |1 − γμ| ≥ 1 for some eigenvalue μ of A (complex for non-symmetric A),
    or when A is not finite. A: (..., d, d) → bool (...)."""
    A = A.to(torch.float64)
    finite = torch.isfinite(A).flatten(-2).all(-1)
    mu = torch.linalg.eigvals(torch.where(finite[..., None, None], A, torch.zeros_like(A)))
    return ~finite | ((1 - gamma * mu).abs() >= 1).any(-1)


# ----------------------------------------------------------------------------------------------
# the τ cells in closed form

def complete_homogeneous(K: int, *xs) -> torch.Tensor:
    """Complete homogeneous polynomial h_{K−n+1}(x_1..x_n) = Σ_{e_1+…+e_n = K−n+1} Π_j x_j^{e_j}
    (n = 2: Σ_{k<K} x^{K−1−k} y^k; n = 3: Σ_{a+b+c=K−2} x^a y^b z^c), elementwise on broadcastable
    tensors. It is the divided difference of t^K, read by Opitz' formula off the top-right entry of J^K,
    J = diag(x) + unit superdiagonal (n×n): exact also for repeated values (0 when K < n−1)."""
    xs = torch.broadcast_tensors(*[torch.as_tensor(x, dtype=F64) for x in xs])
    n = len(xs)
    J = torch.diag_embed(torch.stack(xs, -1))
    i = torch.arange(n - 1)
    J[..., i, i + 1] = 1.0
    return torch.linalg.matrix_power(J, int(K))[..., 0, n - 1]


def _ula_tau_cells_finite(lam, P, Q, a, gamma, K, c0):
    """`tau_term_from_var` after K ULA steps from N(0, c₀I), in closed form (cells as in the stationary case).

    P_il = Var(Δ_il), Q_il = Cov(Δ_il, Δ_li) (Q_ii = P_ii). ULA with A = diag(a) + Δ,
    C_{k+1} = (I − γA) C_k (I − γA)ᵀ + 2γI, expanded as C_k = c_k + C¹_k + C²_k with p = 1 − γa and
    c_k = c_∞ + p^{2k}(c₀ − c_∞) (note §3). First order, by the recursion
    C¹_{k+1,ij} = p_ip_j C¹_{k,ij} − γ(Δ_ij p_j c_{k,j} + Δ_ji p_i c_{k,i}):
        C¹_{K,ij} = −(α_ij Δ_ij + α_ji Δ_ji),  α_ij = γ p_j Σ_{k<K} (p_ip_j)^{K−1−k} c_{k,j};
    second order, C²_{k+1,ii} = p_i² C²_{k,ii} + 2γp_i Σ_l Δ_il(α^{(k)}_li Δ_li + α^{(k)}_il Δ_il)
    + γ² Σ_l c_{k,l} Δ_il², so
        E[C²_{K,ii}] = Σ_l 2γp_i (P_il T_il + Q_il T'_il) + γ² P_il Σ_{k<K} p_i^{2(K−1−k)} c_{k,l},
    T_il = Σ_k p_i^{2(K−1−k)} α^{(k)}_il and T'_il the same for α^{(k)}_li: geometric sums, i.e. `complete_homogeneous`.
    cell_il = ½ W_il E[(C¹_il)²] + ρ_i (contribution of row i, column l to E[C²_ii]); (d, d).
    As K → ∞, α_ij → e_j/D_ij and this is the stationary closed form.
    """
    p = 1 - gamma * a
    cinf = 1.0 / (a * (1.0 - 0.5 * gamma * a))
    dc = c0 - cinf
    rho, W = bures_second_order_weights(lam, cinf + p ** (2 * K) * dc)
    pi, pj = p[:, None], p[None, :]
    ci, cj, di, dj = cinf[:, None], cinf[None, :], dc[:, None], dc[None, :]
    pp, p2i, p2j = pi * pj, pi ** 2, pj ** 2
    alpha = gamma * pj * (cj * complete_homogeneous(K, pp, 1.0) + dj * complete_homogeneous(K, pp, p2j))
    T = gamma * pj * (cj * complete_homogeneous(K, p2i, pp, 1.0) + dj * complete_homogeneous(K, p2i, pp, p2j))
    Tt = gamma * pi * (ci * complete_homogeneous(K, p2i, pp, 1.0) + di * complete_homogeneous(K, p2i, pp, p2i))
    Csum = cj * complete_homogeneous(K, p2i, 1.0) + dj * complete_homogeneous(K, p2i, p2j)
    quad = alpha ** 2 * P + alpha.T ** 2 * P.T + 2 * alpha * alpha.T * Q
    lin = 2 * gamma * pi * (P * T + Q * Tt) + gamma ** 2 * P * Csum
    return 0.5 * W * quad + rho[:, None] * lin


def tau_term_from_var(eigenvalues, var, *, score, gamma, cross=None, steps=None, init_var=1.0):
    """Optimisation term from an arbitrary covariance of Δ = A − diag(score) (note §5.3), per cell (d, d).

    var_ri = Var(Δ_ri); cross_ri = Cov(Δ_ri, Δ_ir) (None: 0; diagonal ignored). The sum of the
    returned matrix is ½ Σ_pq Cov(Δ_p, Δ_q) ∂²B²(Σ, C(A))/∂Δ_p∂Δ_q at A = diag(score), C the ULA law.
    steps=None: closed form of the stationary Lyapunov map, with a = score, c = 1/(a(1−γa/2)),
    e_i = c_i(1−γa_i), D_ij = a_i + a_j − γa_ia_j, P = var, Q = cross (Q_ii := P_ii):

        cell_ij = ½W_ij (e_j²P_ij + e_i²P_ji + 2e_ie_jQ_ij)/D_ij²
                + ρ_i/D_ii [2(1−γa_i)(P_ij e_j + Q_ij e_i)/D_ij + γ c_j P_ij].

    With P_ri = τ v_r, Q = 0 this is τ K_τ of the note. steps = K: the same expansion of the K-step
    law from N(0, init_var·I), in closed form (`_ula_tau_cells_finite`; equal to the autograd contraction of
    `langevin_covariance` and to the chain's `gsm.theory.law.chain_tau_kernel`, tests/theory/test_theory.py).
    """
    lam = eigenvalues
    d = lam.numel()
    a = torch.as_tensor(score, dtype=F64)
    cross = torch.zeros(d, d, dtype=F64) if cross is None else cross
    eye = torch.eye(d, dtype=F64)
    P = var
    Q = torch.where(eye.bool(), P, cross)
    if steps is not None:
        return _ula_tau_cells_finite(lam, P, Q, a, gamma, int(steps), init_var)
    c = langevin_variance(a, gamma)
    rho, W = bures_second_order_weights(lam, c)
    e = c * (1 - gamma * a)
    D = a[:, None] + a[None, :] - gamma * a[:, None] * a[None, :]
    Dii = torch.diagonal(D)
    quad = (e[None, :] ** 2 * P + e[:, None] ** 2 * P.T + 2 * e[:, None] * e[None, :] * Q) / D ** 2
    lin = (2 * (1 - gamma * a)[:, None] * (P * e[None, :] + Q * e[:, None]) / D
           + gamma * c[None, :] * P) * (rho / Dii)[:, None]
    return 0.5 * W * quad + lin


# ----------------------------------------------------------------------------------------------
# the law map and the bias split

@dataclass
class ULALaw:
    """The law map of ULA (step γ, K = `steps` steps from N(0, init_var·I); steps=None: the stationary law)
    in closed form: `langevin_variance`, `tau_term_from_var`, and the 1/N divided differences of the chain
    in closed form (Opitz, O(log K)). Equal to `ChainLaw(ula_chain(γ, K))`."""

    gamma: float
    steps: int | None
    init_var: float = 1.0

    def variance(self, a: torch.Tensor) -> torch.Tensor:
        return langevin_variance(a[..., 0, :], self.gamma, self.steps, self.init_var)

    def divided_differences(self, lam, objective, alphas, stds, budget=None):
        """h^[1], h^[2] of the law as a matrix function of Σ̂ (Opitz), in closed form: with P = I − γA(Σ̂),
        h = P^{2K}c₀ + 2γ Σ_{k<K} P^{2k} (O(log K), `power_and_geometric_sum`), or (A − γA²/2)⁻¹ stationary."""
        def h(X):
            A = objective.score_function(X, alphas, stds, budget)[..., 0, :, :]
            if self.steps is None:                       # 2γ(I − P²)⁻¹, finite at γ = 0 too
                return torch.linalg.inv(A - 0.5 * self.gamma * A @ A)
            eye = torch.eye(A.shape[-1], dtype=F64)
            P2 = (eye - self.gamma * A) @ (eye - self.gamma * A)
            R, S = power_and_geometric_sum(P2, int(self.steps))
            return self.init_var * R + 2 * self.gamma * S
        return opitz_divided_differences(h, lam)[1:]

    def tau_cells(self, lam, a, h, var, cross=None, symmetric=False) -> torch.Tensor:
        cross = var[0] if symmetric else (cross[0] if cross is not None else None)
        return tau_term_from_var(lam, var[0], score=a[0], gamma=self.gamma, cross=cross, steps=self.steps,
                                 init_var=self.init_var)


def ula_bias_terms(lam, sigma: float, gamma: float, steps: int | None, h) -> dict:
    """The exact-score bias Σ(√λ − √h*)² split into (a) noise Σ(√λ − √m)², m = λ + σ², (d) discretisation
    (the stationary law at γ) and the finite-K mixing; without a stationary law (γ ≥ 2 m_min) all of the
    rest is called discretisation. h: the output variance at the DSM optimum a* = 1/m."""
    m = lam + sigma ** 2
    noise, total = w2_commuting(lam, m), w2_commuting(lam, h)
    stationary = w2_commuting(lam, langevin_variance(1.0 / m, gamma)) if gamma < 2 * float(m.min()) else total
    return {"noise": noise, "discretization": stationary - noise, "mixing": total - stationary}


def tau_fourth_order(eigenvalues, *, sigma, gamma, batch_size=1, steps=None, init_var=1.0,
                     radius=None, points=32):
    """F₂ = ⅛ Σ_pq v_p v_q ∂⁴B²/∂Δ_p²∂Δ_q² (note §5.5): the Gaussian fourth-order part of E[B²] is
    τ²F₂ with Var(Δ_p) = τ v_p (non-symmetric A, stationary SGD, first-order v).

    B²(Δ) = tr Λ + tr C − 2 Σ √eig(Λ^{½}CΛ^{½}) with C the exact ULA law of A* + Δ is analytic in Δ,
    so each 4th derivative along a line is read off a Cauchy integral: f⁗(0) = 4!/(K r⁴) Σ_k f(z_k) z_k^{−4}
    over K = `points` complex points z_k = r e^{2πik/K} (spectrally accurate, no autograd; r = `radius`
    must stay inside the analyticity radius, the aliasing error is O((r/R)^K); default 0.2·min a*). Mixed derivatives by
    polarisation: ∂⁴_ppqq = [D⁴_{p+q} + D⁴_{p−q} − 2D⁴_p − 2D⁴_q]/12. O(d⁴) lines: small d only.
    """
    lam = check_spectrum(eigenvalues)
    d = lam.numel()
    if d > 8:
        raise ValueError(f"tau_fourth_order needs a small dimension (d <= 8), got d={d}")
    a = 1.0 / (lam + sigma ** 2)
    v = (lam / (2 * batch_size * (lam + sigma ** 2)))[:, None].expand(d, d).reshape(-1)   # Var(Δ_ri)/τ, note §2.2
    radius = 0.2 * float(a.min()) if radius is None else radius
    n = d * d
    E = torch.eye(n, dtype=F64)
    p, q = torch.triu_indices(n, n, offset=1)
    U = torch.cat([E, E[p] + E[q], E[p] - E[q]]).reshape(-1, 1, d, d)          # lines
    z = radius * torch.exp(2j * math.pi * torch.arange(points, dtype=F64) / points)
    A = torch.diag(a).to(torch.complex128) + z[:, None, None] * U             # (lines, K, d, d)
    C = langevin_covariance(A, gamma, steps, init_var)
    root = lam.sqrt().to(torch.complex128)
    X = root[:, None] * C * root[None, :]
    f = lam.sum() + torch.diagonal(C, dim1=-2, dim2=-1).sum(-1) - 2 * torch.linalg.eigvals(X).sqrt().sum(-1)
    D4 = (24 * (f * z ** -4).mean(-1)).real
    Dp, Dplus, Dminus = D4[:n], D4[n:n + p.numel()], D4[n + p.numel():]
    Tpq = (Dplus + Dminus - 2 * Dp[p] - 2 * Dp[q]) / 12
    return float(((v ** 2 * Dp).sum() + 2 * (v[p] * v[q] * Tpq).sum()) / 8)




# ----------------------------------------------------------------------------------------------
# the prediction (README's Python API)

# the scalar inputs of `langevin_prediction`, in the order they are checked: name → `_check` limits
_LIMITS = {"n": dict(low=1, integer=True, allow_none=True), "sigma": dict(low=0, low_open=True),
           "tau": dict(low=0), "gamma": dict(low=0), "batch_size": dict(low=1, integer=True),
           "steps": dict(low=0, integer=True, allow_none=True), "init_var": dict(low=0),
           "particles": dict(low=1, integer=True, allow_none=True), "mean_norm2": dict(low=0),
           "sgd_steps": dict(low=0, integer=True, allow_none=True)}


def _check(name, value, *, low=None, low_open=False, integer=False, allow_none=False):
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must be given, got None")
    if integer and (int(value) != value):
        raise ValueError(f"{name} must be an integer, got {value}")
    v = int(value) if integer else float(value)
    if not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low)):
        raise ValueError(f"{name} must be finite and {'>' if low_open else '>='} {low}, got {value}")
    return v


def _check_combinations(lam, v: dict, init, symmetric, bias, second_order):
    """The inputs that are valid alone but not together (ValueError)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {' | '.join(INITS)}, got {init}")
    if v["sgd_steps"] is not None and v["tau"] == 0 and init != "optimum":
        raise ValueError("sgd_steps needs tau > 0 (with tau = 0, SGD never leaves A₀)")
    m_min = float((lam + v["sigma"] ** 2).min())
    if v["steps"] is None and v["gamma"] >= 2 * m_min:
        raise ValueError(f"gamma must be < 2(λ_min + σ²) = {2 * m_min:.6g} for ULA to have a stationary law, "
                         f"got {v['gamma']}")
    if v["sgd_steps"] is not None and (bias or second_order):
        raise ValueError("sgd_steps is supported with bias=False, second_order=False only")
    if bias and v["steps"] is not None and v["mean_norm2"] > 0:
        raise ValueError(f"bias=True with finite steps needs mean_norm2 = 0 (the K-step mean bias needs "
                         f"μ's direction), got {v['mean_norm2']}")


def ula_warnings(n, sigma: float, gamma: float) -> list[str]:
    """ULA's own caveat for a score fitted to data (note §3)."""
    if n is not None and gamma >= 2 * sigma ** 2:
        return [f"gamma = {gamma} >= 2σ² = {2 * sigma ** 2}: ULA with the empirical optimum can be unstable for "
                "some datasets (note §3)"]
    return []


def _bias_model(out, lam, law, v, a, h, n):
    """The score's bias term s(y) = −Ay + β (note §5.6): x̄ − μ ~ N(0, Σ/N) shifts the mean and
    E[Σ̂_c] = (1 − 1/N)Σ the covariance (1/N), β's SGD noise adds to the τ term."""
    pK = (1 - v["gamma"] * a[0]) ** v["steps"] if v["steps"] is not None else torch.zeros_like(lam)
    rho, _ = bures_second_order_weights(lam, h)
    if n is not None:
        h1 = law.divided_differences(lam, DSM(), torch.ones(1), torch.full((1,), v["sigma"]))[0]
        out["generalization"] += float((lam * (1 - pK) ** 2 - rho * torch.diagonal(h1) * lam).sum()) / n
    if v["tau"] > 0:
        out["optimization"] += v["tau"] * (1 + v["mean_norm2"]) * float(
            ((1 - pK) ** 2 * lam * (lam + v["sigma"] ** 2)).sum()) / (2 * v["batch_size"])


def langevin_prediction(eigenvalues, *, n, sigma, tau, gamma, batch_size=1, steps=None, init_var=1.0,
                        particles=None, symmetric=False, bias=False, mean_norm2=0.0,
                        second_order=False, sgd_steps=None, init="zeros", particle_mean=False) -> dict:
    """Predicted E[W2²(N(0,Σ), law of the ULA output)] term by term (note §5), float64:
    `gsm.theory.prediction.linear_prediction` of `ULALaw` with the DSM objective at the level (1, σ).

    Args:
        eigenvalues: λ (d,), the spectrum of Σ.
        n: number of training samples N (None: exact population score, no 1/N term).
        sigma: DSM noise level σ > 0. tau: SGD step τ ≥ 0 (0: no optimisation term).
        gamma: ULA step γ ≥ 0. batch_size: b.
        steps: ULA steps K from N(0, init_var·I) (None: stationary law).
        particles: M, if W2 is measured from Ĉ = (1/M)Σ x xᵀ over M independent chains (None: no term).
        symmetric: A kept symmetric by the update A ← A − τ(g+gᵀ)/2 (note §5.3).
        bias: the score has a bias term, s(y) = −Ay + β, fitted on data with mean μ, |μ|² = mean_norm2
            (note §5.6; the law's mean error enters W2²).
        second_order: also return the O(τ²)-corrected optimisation term (small d): exact SGD variance
            of §2.3 through `tau_term_from_var` plus τ²F₂.
        sgd_steps: finite number k of SGD steps from A₀ = 0 (init="zeros"), A₀ = I ("identity") or
            A₀ = A* ("optimum"); None: SGD at stationarity (`gsm.training.objectives.DSM.fluctuations`).
        particle_mean: the particle mean is also estimated (centred 1/M covariance, mean error in W2).

    Returns the dict of `linear_prediction` with the bias split into noise, discretization and mixing
    (finite-K burn-in, 0 when steps=None); optimization includes sgd_mean_offset.
    """
    lam = check_spectrum(eigenvalues)
    v = {name: _check(name, value, **_LIMITS[name]) for name, value in dict(
        n=n, sigma=sigma, tau=tau, gamma=gamma, batch_size=batch_size, steps=steps, init_var=init_var,
        particles=particles, mean_norm2=mean_norm2, sgd_steps=sgd_steps).items()}
    _check_combinations(lam, v, init, symmetric, bias, second_order)
    law, objective = ULALaw(v["gamma"], v["steps"], v["init_var"]), DSM()
    alphas, stds = torch.ones(1, dtype=F64), torch.full((1,), v["sigma"], dtype=F64)
    budget = SGDBudget(v["sgd_steps"], v["tau"], v["batch_size"], init) if v["sgd_steps"] is not None else None
    out = linear_prediction(law, objective, lam, alphas, stds, n=v["n"], tau=v["tau"], batch_size=v["batch_size"],
                            particles=v["particles"], symmetric=symmetric, budget=budget,
                            bias_terms=lambda h: ula_bias_terms(lam, v["sigma"], v["gamma"], v["steps"], h))
    out["warnings"] += ula_warnings(v["n"], v["sigma"], v["gamma"])
    a, h = objective.mean(lam, alphas, stds, budget if v["tau"] > 0 else None), out["sampler_variance"]
    if bias:
        _bias_model(out, lam, law, v, a, h, v["n"])
    if second_order and v["tau"] > 0:
        P = objective.exact_fluctuations(lam, v["sigma"], v["tau"], v["batch_size"])
        out["F2"] = tau_fourth_order(lam, sigma=v["sigma"], gamma=v["gamma"], batch_size=v["batch_size"],
                                     steps=v["steps"], init_var=v["init_var"])
        out["optimization_second_order"] = float(tau_term_from_var(
            lam, P, score=a[0], gamma=v["gamma"], steps=v["steps"], init_var=v["init_var"]).sum()) \
            + v["tau"] ** 2 * out["F2"]
    if particle_mean and v["particles"] is not None:
        rho, _ = bures_second_order_weights(lam, h)
        out["particles"] += float((h - rho * h).sum()) / v["particles"]
    out["total"] = sum(out[k] for k in ("noise", "discretization", "mixing", "generalization", "optimization",
                                        "particles"))
    return out
