"""Analytic prediction of E[W2²] for the Langevin pipeline (the theory note: docs/theory.md; "note §n" is its §n).

Pipeline: N samples x ~ N(0, Σ) → linear score s(y) = −A y fitted by SGD (step τ, batch b) on the
DSM loss ℓ = ½‖σ s(y) + z‖², y = x + σz (convention (L)) → ULA x ← x + γ s(x) + √(2γ) ξ → W2² to
N(0, Σ), which for centred Gaussians is the squared Bures distance B². Everything is written in the
eigenbasis of Σ (eigenvalues λ, the power spectrum), in float64:

    E[W2²] = Σ_i (√λ_i − √c_i)²            noise (a) + discretisation (d), exact in σ, γ
           + (1/N) Σ_ij K_N(λ_i, λ_j)       generalisation (Wishart + Daleckii–Krein)
           + τ     Σ_ij K_τ(λ_i, λ_j)       optimisation (SGD stationary fluctuations)
           + (1/M) Σ_ij K_M(λ_i, λ_j)       particles (W2 measured from M samples)

with c_i = h(λ_i) the sampler variance given the exact DSM optimum a_i = 1/(λ_i + σ²). All
"expectations" are first-order asymptotic expansions (note §5.5); w2 values are squared distances.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.func import jvp, vmap

from gsm.theory.sgd import (dsm_score_matrix, sgd_mean_square_stable, sgd_transient_variance, sgd_variance,
                            sgd_variance_exact)

_F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# input checks

def _check_spectrum(eigenvalues) -> torch.Tensor:
    lam = torch.as_tensor(eigenvalues, dtype=_F64).detach().cpu()
    if lam.ndim != 1 or lam.numel() == 0 or not torch.isfinite(lam).all() or not (lam > 0).all():
        raise ValueError(f"eigenvalues must be a non-empty 1-D tensor of finite values > 0, got {lam.tolist()}")
    return lam


def _check(name, value, *, low=None, low_open=False, integer=False, allow_none=False):
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must be given, got None")
    if integer and (int(value) != value):
        raise ValueError(f"{name} must be an integer, got {value}")
    v = int(value) if integer else float(value)
    if not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low)):
        op = ">" if low_open else ">="
        raise ValueError(f"{name} must be finite and {op} {low}, got {value}")
    return v


# ----------------------------------------------------------------------------------------------
# sampler maps: score matrix → ULA covariance (commuting case, matrix functions of Σ̂)

def langevin_variance(a: torch.Tensor, gamma: float, steps: int | None = None,
                      init_var: float = 1.0) -> torch.Tensor:
    """ULA variance along an eigendirection of a symmetric score matrix with eigenvalue a (note §3).

    Stationary: c_∞ = 2γ/(1 − (1−γa)²) = 1/(a(1 − γa/2)). After K = `steps` steps from N(0, c₀):
    c_K = c_∞ + (1−γa)^{2K}(c₀ − c_∞). Elementwise on a tensor of any shape.
    """
    a = torch.as_tensor(a, dtype=_F64)
    if steps is None:
        return 1.0 / (a * (1.0 - 0.5 * gamma * a))
    # c_K = q^K c₀ + 2γ Σ_{k<K} q^k, q = (1−γa)²: the closed form above where q ≠ 1, 2γK at q = 1 (a = 0,
    # an untrained score, whose c_∞ does not exist)
    q, K = (1.0 - gamma * a) ** 2, int(steps)
    one = (q - 1).abs() < 1e-12
    geo = torch.where(one, torch.full_like(q, float(K)), (1 - q ** K) / torch.where(one, torch.ones_like(q), 1 - q))
    return q ** K * init_var + 2 * gamma * geo


def _langevin_variance_matrix(A, gamma, steps, init_var):
    """Matrix version of `langevin_variance` for a symmetric A commuting with Σ̂ (only +, ×, inverse,
    so it also evaluates the map on the bidiagonal matrices of Opitz' formula). After K steps,
    c_K = Q^K c₀ + 2γ Σ_{k<K} Q^k with Q = (I − γA)², summed by binary doubling (+ and × only): finite
    for every A, also a singular one (an untrained score, A = 0: c₀ + 2γK) where c_∞ does not exist."""
    if steps is None:
        return torch.linalg.inv(A - 0.5 * gamma * A @ A)
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    P = eye - gamma * A
    Qp, Sp = P @ P, eye.expand_as(A).clone()          # Q^(2^j), Σ_{k<2^j} Q^k
    S, QK = torch.zeros_like(Sp), eye.expand_as(A).clone()
    K = int(steps)
    while K:
        if K & 1:
            S, QK = S + QK @ Sp, QK @ Qp
        K >>= 1
        if K:
            Sp, Qp = Sp + Qp @ Sp, Qp @ Qp
    return init_var * QK + 2 * gamma * S


def divided_differences(fn, x: torch.Tensor):
    """First and second divided differences of a matrix function f on the spectrum x (d,), by Opitz'
    formula: f applied to the upper-bidiagonal J = diag(x_1..x_n) + superdiagonal of ones has
    f[x_1..x_n] in its top-right entry. Exact also for repeated values (then f' and f''/2).

    fn: maps (…, n, n) → (…, n, n) using only +, ×, inverse (any n).
    Returns H1_ij = f[x_i, x_j] and H2_ij = f[x_i, x_j, x_i], both (d, d) float64.
    """
    x = torch.as_tensor(x, dtype=_F64)
    d = x.numel()
    xi, xj = x[:, None].expand(d, d), x[None, :].expand(d, d)
    J2 = torch.diag_embed(torch.stack([xi, xj], -1))
    J2[..., 0, 1] = 1.0
    J3 = torch.diag_embed(torch.stack([xi, xj, xi], -1))
    J3[..., 0, 1] = 1.0
    J3[..., 1, 2] = 1.0
    return fn(J2)[..., 0, 1], fn(J3)[..., 0, 2]


# ----------------------------------------------------------------------------------------------
# Bures expansion and the four kernels

def bures_second_order_weights(eigenvalues: torch.Tensor, h: torch.Tensor):
    """Weights of the 2nd-order expansion of B² at a base diag(h) commuting with Σ = diag(λ) (note §4):

        B²(Λ, diag h + E) = Σ(√λ_i − √h_i)² + Σ_i ρ_i E_ii + ½ Σ_ij W_ij E_ij² + O(E³),
        ρ_i = 1 − √(λ_i/h_i),  W_ij = √(λ_iλ_j/(h_ih_j)) / (√(λ_ih_i) + √(λ_jh_j)).

    Returns ρ (d,) and W (d, d).
    """
    r = (eigenvalues / h).sqrt()
    s = (eigenvalues * h).sqrt()
    return 1.0 - r, (r[:, None] * r[None, :]) / (s[:, None] + s[None, :])


def kernel_n(eigenvalues, h1, h2, rho, W):
    """1/N kernel (note §5.2) for a sampler map C = h(Σ̂):
    K_N(λ_i, λ_j) = (1+δ_ij) λ_iλ_j [½ W_ij h^{[1]}(λ_i,λ_j)² + ρ_i h^{[2]}(λ_i,λ_j,λ_i)]. (d, d)."""
    d = eigenvalues.numel()
    ll = (1.0 + torch.eye(d, dtype=_F64)) * eigenvalues[:, None] * eigenvalues[None, :]
    return ll * (0.5 * W * h1 ** 2 + rho[:, None] * h2)


def kernel_m(c, W):
    """1/M particle kernel (note §5.4), Ĉ = (1/M)Σ x xᵀ: K_M(λ_i, λ_j) = ½(1+δ_ij) W_ij c_i c_j. (d, d)."""
    d = c.numel()
    return 0.5 * (1.0 + torch.eye(d, dtype=_F64)) * W * c[:, None] * c[None, :]


def power_sum(K: int, *xs) -> torch.Tensor:
    """Complete homogeneous polynomial h_{K−n+1}(x_1..x_n) = Σ_{e_1+…+e_n = K−n+1} Π_j x_j^{e_j}
    (n = 2: Σ_{k<K} x^{K−1−k} y^k; n = 3: Σ_{a+b+c=K−2} x^a y^b z^c), elementwise on broadcastable
    tensors. It is the divided difference of t^K, read by Opitz' formula off the top-right entry of J^K,
    J = diag(x) + unit superdiagonal (n×n): exact also for repeated values (0 when K < n−1)."""
    xs = torch.broadcast_tensors(*[torch.as_tensor(x, dtype=_F64) for x in xs])
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
    T_il = Σ_k p_i^{2(K−1−k)} α^{(k)}_il and T'_il the same for α^{(k)}_li: geometric sums, i.e. `power_sum`.
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
    alpha = gamma * pj * (cj * power_sum(K, pp, 1.0) + dj * power_sum(K, pp, p2j))
    T = gamma * pj * (cj * power_sum(K, p2i, pp, 1.0) + dj * power_sum(K, p2i, pp, p2j))
    Tt = gamma * pi * (ci * power_sum(K, p2i, pp, 1.0) + di * power_sum(K, p2i, pp, p2i))
    Csum = cj * power_sum(K, p2i, 1.0) + dj * power_sum(K, p2i, p2j)
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
    law from N(0, init_var·I), in closed form (`_ula_tau_cells_finite`; equal to the autograd
    `second_order_contraction` of `_ula_covariance`, tests/theory/test_theory.py).
    """
    lam = eigenvalues
    d = lam.numel()
    a = torch.as_tensor(score, dtype=_F64)
    cross = torch.zeros(d, d, dtype=_F64) if cross is None else cross
    eye = torch.eye(d, dtype=_F64)
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
# exact ULA law for a general (non-symmetric) A, differentiable and vmap-friendly

def _ula_covariance(A, gamma, steps=None, init_var=1.0):
    """ULA covariance for s(x) = −A x, P = I − γA (note §3). steps=None: solve C = PCPᵀ + 2γI through
    its Kronecker form (I − P⊗P) vec C = 2γ vec I (small n only); else C_K = P^K c₀ P^{Kᵀ} +
    2γ Σ_{k<K} P^k P^{kᵀ} by binary doubling. A: (n, n) → (n, n). Used for autograd contractions
    and tests; the pipeline uses gsm.samplers.langevin_covariance."""
    n = A.shape[-1]
    eye = torch.eye(n, dtype=A.dtype)
    P = eye - gamma * A
    if steps is None:
        lhs = torch.eye(n * n, dtype=A.dtype) - torch.kron(P, P)
        # inv, not solve: nested forward-mode AD through torch.linalg.solve returns half the 2nd
        # derivative in torch 2.13 (checked against inv and lu_solve)
        return (torch.linalg.inv(lhs) @ (2 * gamma * eye.reshape(n * n))).reshape(n, n)
    K = int(steps)
    S, Pa = torch.zeros_like(A), eye          # Σ_{k<j} P^k P^kᵀ and P^j, j = bits of K read so far
    for bit in bin(K)[2:] if K > 0 else "":
        S, Pa = S + Pa @ S @ Pa.T, Pa @ Pa    # j → 2j
        if bit == "1":
            S, Pa = eye + P @ S @ P.T, P @ Pa  # j → j + 1
    return init_var * Pa @ Pa.T + 2 * gamma * S


def _pair_blocks(score, rho, W):
    """The d² problems of the 2×2 blocks {r, i}: (r, i) flattened (d²,), the base scores diag(a_r, a_i)
    (d², *lead, 2, 2), and ρ (d², 2), W (d², 2, 2) restricted to each block."""
    d = rho.numel()
    r, i = torch.meshgrid(torch.arange(d), torch.arange(d), indexing="ij")
    r, i = r.reshape(-1), i.reshape(-1)
    base = torch.diag_embed(torch.stack([score[..., r], score[..., i]], -1).movedim(-2, 0))  # (d², *lead, 2, 2)
    rho_b = torch.stack([rho[r], rho[i]], -1)                                                 # (d², 2)
    W_b = torch.stack([torch.stack([W[r, r], W[r, i]], -1), torch.stack([W[i, r], W[i, i]], -1)], -2)
    return r, i, base, rho_b, W_b


def _half_second_derivative(cov_fn):
    """(base, U, ρ, W) ↦ ½ d²B²/dt² along cov_fn(base + tU) at t = 0:
    ½ Σ_i ρ_i C''_ii + ½ Σ_ij W_ij (C'_ij)² (note §4), C', C'' by forward-mode autograd (jvp twice)."""
    def quad(base_p, U, rho_p, W_p):
        f = lambda t: cov_fn(base_p + t * U)
        df = lambda t: jvp(f, (t,), (torch.ones((), dtype=_F64),))[1]
        C1, C2 = jvp(df, (torch.zeros((), dtype=_F64),), (torch.ones((), dtype=_F64),))
        return 0.5 * (rho_p * torch.diagonal(C2)).sum() + 0.5 * (W_p * C1 ** 2).sum()
    return quad


def _one_hot_directions(pattern, lead):
    """The 2×2 direction `pattern` at one leading index at a time (zero at the others): (L, *lead, 2, 2)."""
    L = math.prod(lead)
    U = torch.zeros(L, L, 2, 2, dtype=_F64)
    U[torch.arange(L), torch.arange(L)] = pattern
    return U.reshape(L, *lead, 2, 2)


def second_order_contraction(cov_fn, score, eigenvalues, var, cross=None):
    """½ Σ_pq Cov(Δ_p, Δ_q) ∂²B²(Σ, cov_fn(A* + Δ))/∂Δ_p∂Δ_q at A* diagonal in the eigenbasis, by
    forward-mode autograd (torch.func.jvp twice), for centred Δ with independent entries except
    for an optional covariance between Δ_ri and Δ_ir (same leading index).

    This is the first-order optimisation (τ) term of any sampler whose output covariance is an
    equivariant function of the score matrices (cov_fn(O A Oᵀ) = O cov_fn(A) Oᵀ for orthogonal O,
    true for any sampler driven by isotropic Gaussian noise): then a perturbation of entry (r, i)
    only moves the 2×2 block {r, i}, so the contraction is computed on d² batched 2×2 problems.
    Along a direction U: ½ d²B²/dt² = ½ Σ_i ρ_i C''_ii + ½ Σ_ij W_ij (C'_ij)² (note §4, base
    C* = cov_fn(A*) must be diagonal; ρ, W from `bures_second_order_weights`).

    Args:
        cov_fn: maps score matrices (*lead, n, n) → output covariance (n, n), for any n; vmap- and
            jvp-compatible (torch ops only, no .item()). E.g. DDPM: lead = (L,) levels.
        score: A* as its diagonal, (*lead, d).
        eigenvalues: λ (d,).
        var: Var(Δ_ri) per entry, (*lead, d, d).
        cross: Cov(Δ_ri, Δ_ir), (*lead, d, d) or None (diagonal ignored).
    Returns:
        (*lead, d, d) contributions: entry (ℓ, r, i) = Var · ½∂²B²/∂Δ_ri² (+ half of each cross term);
        its sum is the term. Multiply nothing else: var already carries τ.
    """
    lam = torch.as_tensor(eigenvalues, dtype=_F64)
    score = torch.as_tensor(score, dtype=_F64)
    d, lead = lam.numel(), score.shape[:-1]
    C0 = cov_fn(torch.diag_embed(score))
    off = C0 - torch.diag_embed(torch.diagonal(C0))
    if off.abs().max() > 1e-10 * torch.diagonal(C0).abs().max():
        raise ValueError("cov_fn(diag(score)) must be diagonal (the sampler must commute with Σ)")
    rho, W = bures_second_order_weights(lam, torch.diagonal(C0))
    r, i, base, rho_b, W_b = _pair_blocks(score, rho, W)
    per_pair = vmap(_half_second_derivative(cov_fn), in_dims=(None, 0, None, None))   # over leading indices
    over_pairs = vmap(per_pair, in_dims=(0, None, 0, 0))                               # over the d² pairs (r, i)
    along = lambda pattern: over_pairs(base, _one_hot_directions(pattern, lead), rho_b, W_b)    # (d², L)
    E01 = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=_F64)
    E00 = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=_F64)
    # entry (r, i) moves the off-diagonal of its block, entry (r, r) the block's (0, 0) only
    q = torch.where((r == i)[:, None], along(E00), along(E01)).T.reshape(*lead, d, d)
    out = var * q
    if cross is not None and (cross.abs() > 0).any():
        q_sum = along(E01 + E01.T).T.reshape(*lead, d, d)
        H = q_sum - q - q.transpose(-1, -2)     # ∂²B²/∂Δ_ri∂Δ_ir
        offd = ~torch.eye(d, dtype=torch.bool)
        out = out + torch.where(offd, 0.5 * cross * H, torch.zeros_like(H))
    return out


# ----------------------------------------------------------------------------------------------
# second order in τ (small d): Gaussian fourth-order term F₂ (note §5.5)

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
    lam = _check_spectrum(eigenvalues)
    d = lam.numel()
    if d > 8:
        raise ValueError(f"tau_fourth_order needs a small dimension (d <= 8), got d={d}")
    a = 1.0 / (lam + sigma ** 2)
    v = sgd_variance(lam, sigma=sigma, tau=1.0, batch_size=batch_size)[0].reshape(-1)
    radius = 0.2 * float(a.min()) if radius is None else radius
    n = d * d
    E = torch.eye(n, dtype=_F64)
    p, q = torch.triu_indices(n, n, offset=1)
    U = torch.cat([E, E[p] + E[q], E[p] - E[q]]).reshape(-1, 1, d, d)          # lines
    z = radius * torch.exp(2j * math.pi * torch.arange(points, dtype=_F64) / points)
    A = torch.diag(a).to(torch.complex128) + z[:, None, None] * U             # (lines, K, d, d)
    C = vmap(vmap(lambda X: _ula_covariance(X, gamma, steps, init_var)))(A)
    root = lam.sqrt().to(torch.complex128)
    X = root[:, None] * C * root[None, :]
    f = lam.sum() + torch.diagonal(C, dim1=-2, dim2=-1).sum(-1) - 2 * torch.linalg.eigvals(X).sqrt().sum(-1)
    D4 = (24 * (f * z ** -4).mean(-1)).real
    Dp, Dplus, Dminus = D4[:n], D4[n:n + p.numel()], D4[n + p.numel():]
    Tpq = (Dplus + Dminus - 2 * Dp[p] - 2 * Dp[q]) / 12
    return float(((v ** 2 * Dp).sum() + 2 * (v[p] * v[q] * Tpq).sum()) / 8)


# ----------------------------------------------------------------------------------------------
# the prediction

@dataclass(frozen=True)
class _SGDRun:
    """The DSM-SGD run that fitted the score: noise level σ, step τ, batch b, `sgd_steps` SGD steps from
    A₀ = `init` (None: stationarity), `symmetric` update."""

    sigma: float
    tau: float
    b: int
    sgd_steps: int | None
    init: str
    symmetric: bool

    @property
    def transient(self) -> int | None:
        """k of the exact k-step mean score E[A_k]; None when it is the DSM optimum (also from A₀ = A*)."""
        return self.sgd_steps if (self.sgd_steps is not None and self.init != "optimum") else None

    def fluctuations(self, lam):
        """(Var(Δ), Cov(Δ_ri, Δ_ir)) of Δ = A − E[A]: after `sgd_steps` steps, else at stationarity."""
        if self.sgd_steps is not None:
            return sgd_transient_variance(lam, sigma=self.sigma, tau=self.tau, batch_size=self.b,
                                          sgd_steps=self.sgd_steps, init=self.init)
        return sgd_variance(lam, sigma=self.sigma, tau=self.tau, batch_size=self.b, symmetric=self.symmetric)


@dataclass(frozen=True)
class _ULARun:
    """The ULA sampler: step γ, `steps` K from N(0, init_var·I) (None: the stationary law)."""

    gamma: float
    steps: int | None
    init_var: float

    def variance(self, a):
        """c = h(a), the sampler variance along a score eigenvalue a (`langevin_variance`)."""
        return langevin_variance(a, self.gamma, self.steps, self.init_var)

    def start_weight(self, a):
        """p^K = (1 − γa)^K, the weight of the start x₀ = 0 in the K-step mean (0: stationary law)."""
        return (1 - self.gamma * a) ** self.steps if self.steps is not None else torch.zeros(a.numel(), dtype=_F64)


# the scalar inputs of `langevin_prediction`, in the order they are checked: name → `_check` limits
_LIMITS = {"n": dict(low=1, integer=True, allow_none=True), "sigma": dict(low=0, low_open=True),
           "tau": dict(low=0), "gamma": dict(low=0), "batch_size": dict(low=1, integer=True),
           "steps": dict(low=0, integer=True, allow_none=True), "init_var": dict(low=0),
           "particles": dict(low=1, integer=True, allow_none=True), "mean_norm2": dict(low=0),
           "sgd_steps": dict(low=0, integer=True, allow_none=True)}


def _check_combinations(lam, sgd: _SGDRun, ula: _ULARun, bias: bool, second_order: bool, mean_norm2: float):
    """The inputs that are valid alone but not together (ValueError)."""
    if sgd.init not in ("zeros", "identity", "optimum"):
        raise ValueError(f"init must be one of zeros | identity | optimum, got {sgd.init}")
    if sgd.sgd_steps is not None and sgd.tau == 0 and sgd.init != "optimum":
        raise ValueError("sgd_steps needs tau > 0 (with tau = 0, SGD never leaves A₀)")
    m = lam + sgd.sigma ** 2
    if ula.steps is None and ula.gamma >= 2 * m.min():
        raise ValueError(f"gamma must be < 2(λ_min + σ²) = {2 * m.min().item():.6g} for ULA to have a "
                         f"stationary law, got {ula.gamma}")
    if sgd.sgd_steps is not None and (sgd.symmetric or bias or second_order):
        raise ValueError("sgd_steps is supported with symmetric=False, bias=False, second_order=False only")
    if bias and ula.steps is not None and mean_norm2 > 0:
        raise ValueError(f"bias=True with finite steps needs mean_norm2 = 0 (the K-step mean bias needs "
                         f"μ's direction), got {mean_norm2}")


def _diagnostics(lam, n, sgd: _SGDRun, gamma: float):
    """eps_tau = τ max λ(λ+σ²)/(2b), d/N, and warnings where the first-order expansion may not hold."""
    d, m = lam.numel(), lam + sgd.sigma ** 2
    tau, b, sigma = sgd.tau, sgd.b, sgd.sigma
    warnings = []
    eps_tau = tau * float((lam * m).max()) / (2 * b)
    if n is not None and n < 5 * d:
        warnings.append(f"N = {n} < 5d = {5 * d}: the 1/N term may be off by more than ~5% (note §5.5)")
    if tau > 0 and eps_tau > 0.005:
        warnings.append(f"eps_tau = {eps_tau:.3g} > 0.005: the first-order τ term may be off by more than "
                        f"~5% (note §5.5)")
    if n is not None and gamma >= 2 * sigma ** 2:
        warnings.append(f"gamma = {gamma} >= 2σ² = {2 * sigma ** 2}: ULA with the empirical optimum can be "
                        f"unstable for some datasets (note §3)")
    if tau > 0 and not sgd_mean_square_stable(lam, sigma=sigma, tau=tau, batch_size=b):
        warnings.append(f"tau = {tau}: SGD is not mean-square stable (note §2.3); the τ term is meaningless")
    return eps_tau, (d / n if n is not None else 0.0), warnings


def _bias_terms(lam, sigma: float, ula: _ULARun):
    """(a) noise Σ(√λ − √m)², m = λ + σ², (d) discretisation and the finite-K mixing, exact at the DSM
    optimum a* = 1/m; and the bias per eigenvalue (√λ − √h(a*))²."""
    m = lam + sigma ** 2
    a_opt = 1.0 / m
    noise = float(((lam.sqrt() - m.sqrt()) ** 2).sum())
    bias_per = (lam.sqrt() - ula.variance(a_opt).sqrt()) ** 2
    if ula.gamma < 2 * m.min():     # split the finite-K bias into stationary (d) and mixing parts
        bias_stat = float(((lam.sqrt() - langevin_variance(a_opt, ula.gamma).sqrt()) ** 2).sum())
    else:                           # no stationary law: all of it is called discretisation
        bias_stat = float(bias_per.sum())
    mixing = float(bias_per.sum()) - bias_stat
    return {"noise": noise, "discretization": bias_stat - noise, "mixing": mixing}, bias_per


def _n_kernel(lam, n, h_fn, rho, W, a, ula: _ULARun, bias: bool):
    """K_N of the sampler map h (`kernel_n`) and the generalisation term ΣK_N/N (+ the bias model's terms)."""
    h1, h2 = divided_differences(h_fn, lam)
    K_N = kernel_n(lam, h1, h2, rho, W)
    gen = float(K_N.sum()) / n if n is not None else 0.0
    if bias and n is not None:
        # x̄ − μ ~ N(0, Σ/N) shifts the mean; E[Σ̂_c] = (1 − 1/N)Σ shifts the covariance
        pK = ula.start_weight(a)
        gen += float((lam * (1 - pK) ** 2 - rho * torch.diagonal(h1) * lam).sum()) / n
    return K_N, gen


def _tau_kernel(lam, sgd: _SGDRun, ula: _ULARun, a, c, bias_per, bias: bool, mean_norm2: float):
    """The optimisation term: the exact offset of the k-step mean score, B²(c_k) − B²(c*), plus the SGD
    fluctuations, Σ τK_τ (`tau_term_from_var`; + the bias's own with bias=True). Returns K_τ, offset, term."""
    d = lam.numel()
    K_tau = torch.zeros(d, d, dtype=_F64)
    opt = 0.0
    if sgd.transient is not None:
        # mean offset (exact, commuting): B²(c_k) − B²(c_opt)
        opt += float(((lam.sqrt() - c.sqrt()) ** 2).sum() - bias_per.sum())
    offset = opt
    if sgd.tau > 0 and sgd.sgd_steps != 0:      # no SGD step taken: A = A₀ exactly, no fluctuation
        var, cross = sgd.fluctuations(lam)
        cells = tau_term_from_var(lam, var, score=a, gamma=ula.gamma, cross=cross, steps=ula.steps,
                                  init_var=ula.init_var)
        K_tau = cells / sgd.tau
        opt += float(cells.sum())
        if bias:
            pK = ula.start_weight(a)
            m = lam + sgd.sigma ** 2
            opt += sgd.tau * (1 + mean_norm2) * float(((1 - pK) ** 2 * lam * m).sum()) / (2 * sgd.b)
    return K_tau, offset, opt


def _second_order_tau(lam, sgd: _SGDRun, ula: _ULARun, a):
    """F₂ and the O(τ²)-corrected optimisation term: the exact SGD variance (§2.3) through
    `tau_term_from_var`, plus τ²F₂ (`tau_fourth_order`)."""
    P_exact = sgd_variance_exact(lam, sigma=sgd.sigma, tau=sgd.tau, batch_size=sgd.b)
    F2 = tau_fourth_order(lam, sigma=sgd.sigma, gamma=ula.gamma, batch_size=sgd.b, steps=ula.steps,
                          init_var=ula.init_var)
    cells = tau_term_from_var(lam, P_exact, score=a, gamma=ula.gamma, steps=ula.steps, init_var=ula.init_var)
    return F2, float(cells.sum()) + sgd.tau ** 2 * F2


def _particle_kernel(c, rho, W, M, particle_mean: bool):
    """K_M (`kernel_m`) and the particle term ΣK_M/M (+ Σ(1 − ρ)c/M when the particle mean is estimated)."""
    K_M = kernel_m(c, W)
    part = 0.0
    if M is not None:
        part = float(K_M.sum()) / M
        if particle_mean:
            part += float((c - rho * c).sum()) / M
    return K_M, part


def langevin_prediction(eigenvalues, *, n, sigma, tau, gamma, batch_size=1, steps=None, init_var=1.0,
                        particles=None, symmetric=False, bias=False, mean_norm2=0.0,
                        second_order=False, sgd_steps=None, init="zeros", particle_mean=False) -> dict:
    """Predicted E[W2²(N(0,Σ), law of the ULA output)] term by term (note §5), float64.

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
            A₀ = A* ("optimum"); None: SGD at stationarity. The exact mean offset of E[A_k] (a function
            of Σ̂, so also inside the 1/N term) is reported as sgd_mean_offset, part of optimization;
            the fluctuations grow as in `sgd_transient_variance`. Needs tau > 0 (else A stays at A₀).
        particle_mean: the particle mean is also estimated (centred 1/M covariance, mean error in W2).

    Returns a dict with python floats total, noise, discretization, mixing (finite-K burn-in,
    0 when steps=None), generalization, optimization (incl. sgd_mean_offset), particles; tensors
    kernel_n, kernel_tau, kernel_m (d, d: the terms divided by 1/N, τ, 1/M), bias_per_eigenvalue,
    sampler_variance (c_i), eigenvalues; diagnostics d_over_n, eps_tau = τ max λ(λ+σ²)/(2b), warnings
    (list of str).
    """
    lam = _check_spectrum(eigenvalues)
    v = {name: _check(name, value, **_LIMITS[name]) for name, value in dict(
        n=n, sigma=sigma, tau=tau, gamma=gamma, batch_size=batch_size, steps=steps, init_var=init_var,
        particles=particles, mean_norm2=mean_norm2, sgd_steps=sgd_steps).items()}
    n, M, mean_norm2 = v["n"], v["particles"], v["mean_norm2"]
    sgd = _SGDRun(v["sigma"], v["tau"], v["batch_size"], v["sgd_steps"], init, symmetric)
    ula = _ULARun(v["gamma"], v["steps"], v["init_var"])
    _check_combinations(lam, sgd, ula, bias, second_order, mean_norm2)
    eps_tau, d_over_n, warnings = _diagnostics(lam, n, sgd, ula.gamma)

    # the mean score E[A] and the sampler map h as matrix functions of Σ̂ (h_fn: for Opitz' formula)
    score_fn = lambda X: dsm_score_matrix(X, sgd.sigma, sgd.tau, sgd.transient, sgd.init)
    h_fn = lambda X: _langevin_variance_matrix(score_fn(X), ula.gamma, ula.steps, ula.init_var)
    a = torch.diagonal(score_fn(torch.diag(lam)))          # mean score (= a_opt unless SGD transient)
    c = ula.variance(a)
    rho, W = bures_second_order_weights(lam, c)
    out, bias_per = _bias_terms(lam, sgd.sigma, ula)
    K_N, gen = _n_kernel(lam, n, h_fn, rho, W, a, ula, bias)
    K_tau, out["sgd_mean_offset"], out["optimization"] = _tau_kernel(lam, sgd, ula, a, c, bias_per, bias, mean_norm2)
    if second_order and sgd.tau > 0:
        out["F2"], out["optimization_second_order"] = _second_order_tau(lam, sgd, ula, a)
    K_M, part = _particle_kernel(c, rho, W, M, particle_mean)
    out.update(generalization=gen, particles=part)
    out["total"] = out["noise"] + out["discretization"] + out["mixing"] + gen + out["optimization"] + part
    out.update(kernel_n=K_N, kernel_tau=K_tau, kernel_m=K_M, bias_per_eigenvalue=bias_per,
               sampler_variance=c, eigenvalues=lam, eps_tau=eps_tau, d_over_n=d_over_n, warnings=warnings)
    return out
