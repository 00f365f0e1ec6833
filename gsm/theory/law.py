"""The law map of a linear sampler: its output law as a function of its score matrices, and the
expansions of it that the prediction needs (docs/theory.md §4, §5, §9).

A law map answers, in the eigenbasis of Σ (eigenvalues λ, float64):

* `variance(a)`: the output variance h per eigenvalue for diagonal scores a (L, d);
* `divided_differences(λ, objective, alphas, stds, budget)`: h^[1](λ_i, λ_j), h^[2](λ_i, λ_j, λ_i) of the
  output as a matrix function of Σ̂ through the objective's scores (the 1/N term, note §5.2);
* `tau_cells(λ, a, h, var, cross, symmetric)`: E[B²(Σ, C(A + Δ))] − B²(Σ, C(A)) at second order in the
  score error Δ, per cell (the τ term, note §5.3);
* `series(...)`, `diagonal_tau_cells(...)`: the same for circulant (Fourier-diagonal) scores.

Two maps derive all of it from the sampler's step map: `ChainLaw` (a `gsm.theory.chain.LinearChain`:
jets in the SERIES and MATRIX_JET algebras, O(d·K) and O(d²·K)) and `PushLaw` (a push run on rows: Opitz'
formula on 3×3 Jordan blocks and lifted 6×6 scores). Samplers with a closed form (ULA, the continuous VP
laws) supply their own map with the same members, tested equal to the derived one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from gsm.algebra import MATRIX_JET, series_mm
from gsm.theory.bures import bures_second_order_weights
from gsm.theory.chain import LinearChain, output_law, output_variance

F64 = torch.float64


# ------------------------------------------------------------------------------ divided differences

def divided_differences_from_jets(lam: torch.Tensor, H: torch.Tensor, rel_gap: float = 1e-3):
    """h^[1](λ_i, λ_j) and h^[2](λ_i, λ_j, λ_i) for all pairs from the per-eigenvalue series
    H (d, 4) = (h, h′, h″/2, h‴/6):

        far pairs  (|λ_j − λ_i| > rel_gap·max(|λ_i|, |λ_j|)):  h^[1] = (h_i − h_j)/(λ_i − λ_j),
                    h^[2](λ_i, λ_j, λ_i) = (h^[1]_ij − h′_i)/(λ_j − λ_i);
        near pairs (Taylor at λ_i, δ = λ_j − λ_i):           h^[1] = h′ + (h″/2)δ + (h‴/6)δ²,
                    h^[2] = h″/2 + (h‴/6)δ.

    Cancellation error of the far formula ~ ε_mach/gap², truncation of the near one ~ gap²:
    both ≤ ~1e-6 relative at rel_gap = 1e-3 (the exact Opitz result is the test reference).
    Returns (d, d), (d, d)."""
    li, lj = lam.view(-1, 1), lam.view(1, -1)
    delta = lj - li
    near = delta.abs() <= rel_gap * torch.maximum(li.abs(), lj.abs())
    hi, hj, d1 = H[:, 0].view(-1, 1), H[:, 0].view(1, -1), H[:, 1].view(-1, 1)
    safe = torch.where(near, torch.ones_like(delta), delta)
    h1_far = (hj - hi) / safe
    h2_far = (h1_far - d1) / safe
    h1_near = d1 + H[:, 2].view(-1, 1) * delta + H[:, 3].view(-1, 1) * delta ** 2
    h2_near = H[:, 2].view(-1, 1) + H[:, 3].view(-1, 1) * delta
    return torch.where(near, h1_near, h1_far), torch.where(near, h2_near, h2_far)


def opitz_divided_differences(h_on_matrix: Callable, lam: torch.Tensor):
    """Reference (exact, O(d²·K)): h of the bidiagonal J = [[λ_i, 1, 0], [0, λ_j, 1], [0, 0, λ_i]]
    holds h^[1](λ_i, λ_j) at (0, 1) and h^[2](λ_i, λ_j, λ_i) at (0, 2). h_on_matrix: (..., 3, 3) → same."""
    d = lam.numel()
    J = torch.zeros(d, d, 3, 3, dtype=F64)
    J[..., 0, 0] = J[..., 2, 2] = lam.view(d, 1)
    J[..., 1, 1] = lam.view(1, d)
    J[..., 0, 1] = J[..., 1, 2] = 1.0
    H = h_on_matrix(J)
    return H[..., 0, 0].diagonal(), H[..., 0, 1], H[..., 0, 2]


# ------------------------------------------------------------------------------------------ τ kernel

@dataclass(frozen=True)
class _LevelRead:
    """Level l as the chain reads it: the consecutive steps k1..k2, the variance c_in (d,) before them and
    ℓ = Π m_k (d,) over the steps after them (C_out = ℓ Φ ℓ)."""

    l: int
    k1: int
    k2: int
    c_in: torch.Tensor
    ell: torch.Tensor


def _suffix_products(m: torch.Tensor, K: int) -> torch.Tensor:
    """after[k] = Π_{j≥k} m_j (after[K] = 1): the factors (K, d) → (K+1, d)."""
    after = torch.ones(K + 1, m.shape[-1], dtype=F64)
    for k in range(K - 1, -1, -1):
        after[k] = after[k + 1] * m[k]
    return after


def _pair_jets(chain: LinearChain, a: torch.Tensor, lv: _LevelRead, *entries):
    """(ℓ_iℓ_j Φ¹_ij, ℓ_i² Φ²_ii) (d, d): the first and second jet coefficients of C_ij, C_ii along the direction
    Σ E_pr over `entries` ((p, r) in the 2×2 block) at level lv.l, for every pair block {i, j} at once."""
    d = a.shape[-1]
    ii, jj = torch.meshgrid(torch.arange(d), torch.arange(d), indexing="ij")
    li, lj = lv.ell[ii], lv.ell[jj]
    E = torch.zeros(2, 2, dtype=F64)
    for p, r in entries:
        E[p, r] = 1.0
    Phi = _block_jet(chain, a, lv.l, lv.k1, lv.k2, lv.c_in, E, ii, jj)      # (d, d, 3, 2, 2)
    return li * lj * Phi[..., 1, 0, 1], li ** 2 * Phi[..., 2, 0, 0]


def _off_diagonal_cells(chain: LinearChain, a, lv: _LevelRead, V, rho, W, symmetric: bool, cross):
    """Cells (d, d) of the off-diagonal Δ_ij at level lv.l: ½W_ij E[(C¹_ij)²] + ρ_i E[C²_ii] per visit
    (+ the Cov(Δ_ij, Δ_ji) terms); the caller keeps the off-diagonal."""
    # each off-diagonal variable is visited twice ((i, j) and (j, i)): at each visit half of
    # ½W(C¹_ij² + C¹_ji²) = ½W E[C¹²], and the second-order change of C at the visit's first index
    Vl = V[lv.l]
    if symmetric:
        P, P2 = _pair_jets(chain, a, lv, (0, 1), (1, 0))
        return 0.5 * W * Vl * P ** 2 + rho.view(-1, 1) * Vl * P2
    P, P2 = _pair_jets(chain, a, lv, (0, 1))                      # Δ_ij
    Q, Q2 = _pair_jets(chain, a, lv, (1, 0))                      # Δ_ji
    cell = 0.5 * W * (Vl * P ** 2 + Vl.T * Q ** 2) + rho.view(-1, 1) * (Vl * P2 + Vl.T * Q2)
    if cross is not None:                    # Cov(Δ_ij, Δ_ji): the mixed terms
        _, PQ2 = _pair_jets(chain, a, lv, (0, 1), (1, 0))
        cell = cell + cross[lv.l] * (W * P * Q + rho.view(-1, 1) * (PQ2 - P2 - Q2))
    return cell


def _diagonal_cells(chain: LinearChain, a, lv: _LevelRead, V, rho, W):
    """Cells (d,) of the diagonal Δ_ii at level lv.l: a 1×1 problem, the 2×2 block at (i, i) with
    E = e_0 e_0ᵀ: ½W_ii V_ii (ℓ_i² Φ¹_00)² + ρ_i V_ii ℓ_i² Φ²_00. V (L, d): the diagonal variances."""
    E = torch.zeros(2, 2, dtype=F64)
    E[0, 0] = 1.0
    idx = torch.arange(a.shape[-1])
    Phi = _block_jet(chain, a, lv.l, lv.k1, lv.k2, lv.c_in, E, idx, idx)
    Vd, ell = V[lv.l], lv.ell
    return 0.5 * W * Vd * (ell ** 2 * Phi[..., 1, 0, 0]) ** 2 + rho * Vd * ell ** 2 * Phi[..., 2, 0, 0]


def _level_reads(chain: LinearChain, a: torch.Tensor, init_var):
    """The `_LevelRead` of every level some step reads, at diagonal scores a (L, d)."""
    m = chain.factors(a)                                             # (K, d)
    c = chain.variance(a, init_var, trajectory=True)                 # (K+1, d)
    after = _suffix_products(m, chain.K)                             # after[k] = Π_{j≥k} m_j
    return [_LevelRead(l, min(S), max(S), c[min(S)], after[max(S) + 1])
            for l, S in enumerate(chain.steps_reading()) if S]


def chain_diagonal_tau_cells(chain: LinearChain, a: torch.Tensor, V: torch.Tensor, rho: torch.Tensor, W: torch.Tensor,
                             init_var=1.0) -> torch.Tensor:
    """Σ_l V_l [½W (∂h/∂a_l)² + ½ρ ∂²h/∂a_l²] per coordinate (d,): the τ cells when only the diagonal of
    each score fluctuates (circulant scores: the Fourier-diagonal case), V (L, d), ρ, W (d,) the diagonal
    Bures weights."""
    a = a.to(F64)
    return sum(_diagonal_cells(chain, a, lv, V, rho, W) for lv in _level_reads(chain, a, init_var))


def chain_tau_kernel(chain: LinearChain, a: torch.Tensor, V: torch.Tensor, rho: torch.Tensor, W: torch.Tensor,
                     init_var=1.0, symmetric: bool = False, cross: torch.Tensor | None = None) -> torch.Tensor:
    """K_τ (d, d) per unit τ: E[B²(Σ, C(A* + Δ))] − B²(Σ, C(A*)) ≈ τ Σ_ij K_τ,ij, for independent
    zero-mean per-level fluctuations Δ_l with Var(Δ_l,ij) = τ V[l, i, j] (entries uncorrelated;
    `symmetric`: Δ_ij = Δ_ji), at scores A* = U diag(a_l) Uᵀ (a (L, d)) sharing Σ's eigenbasis.

    Derivation. In the eigenbasis every unperturbed M_k, C_k is diagonal (m_k, c_k). Levels are
    independent and zero-mean, so E[B²] − B⁰ = Σ_l (level l alone) to second order. Level l is read by
    the consecutive steps S_l (one step; two for Heun/RK4 endpoints; twice within a step for RK4
    midpoints). Write the block covariance map Φ(A_l) = M_S c_in M_Sᵀ + Q_S (S_l composed, c_in = C
    before S_l) and ℓ = Π m_k after S_l, so C_out = ℓ Φ ℓ. M_S is a polynomial in A_l and diagonal
    matrices, hence a perturbation A_l + εE in the one-entry direction E = e_i e_mᵀ only couples
    indices i, m: the 2×2 restriction to {i, m} of every product is exact for the entries C_ii, C_mm,
    C_im. The jets (order ε²) of Φ along E give, with Φ = Φ⁰ + εΦ¹ + ε²Φ² and E[Δ_e²] = τV_e,

        E[(C¹_im)²] = ℓ_i² ℓ_m² Σ_e V_e (Φ¹_im[e])²,   E[C²_ii] = ℓ_i² Σ_e V_e Φ²_ii[e],

    (e over the entries (i, m), (m, i) of Δ_l; cross terms have zero mean), and the Bures expansion
    E[B²] − B⁰ = Σ_i ρ_i E[C²_ii] + ½ Σ_ij W_ij E[(C¹_ij)²] (theory note §4). For a one-stage step
    M = cI − gA this is the DDPM/DDIM kernel of note §6.4, with f = c − g a_l the step's eigenvalues,

        K_ij = g² ℓ_i² [½(1+δ_ij) W_ij ℓ_j² (V_ij c_in,j² f_j² + V_ji c_in,i² f_i²) + ρ_i V_ij c_in,j].

    `cross` (L, d, d): Cov(Δ_ij, Δ_ji)/τ (i ≠ j; the finite-budget transient,
    `gsm.training.objectives.DSM().fluctuations(..., budget)`) adds W P Q c + ρ_i c ∂²C_ii/∂Δ_ij∂Δ_ji,
    the mixed derivative from the jet along E_ij + E_ji; for multi-stage steps the first-order change
    of M_k is its derivative δM = Σ_(stages reading l) ∂M/∂G_i [−r_i Δ] (e.g. Heun:
    M = I + (h/2)(G₁ + G₂ + h G₂G₁), δM = (h/2)(δG₁ + δG₂ + h(δG₂ G₁ + G₂ δG₁))), and its
    second-order change (RK4: a midpoint level in two stages) enters Φ² — both carried by the jets.
    """
    a = a.to(F64)
    d = a.shape[-1]
    out = torch.zeros(d, d, dtype=F64)
    offdiag = ~torch.eye(d, dtype=F64).bool()
    for lv in _level_reads(chain, a, init_var):
        out += torch.where(offdiag, _off_diagonal_cells(chain, a, lv, V, rho, W, symmetric, cross), 0.0)
        out += torch.diag(_diagonal_cells(chain, a, lv, V.diagonal(dim1=-2, dim2=-1), rho, W.diagonal()))
    return out


def _block_jet(chain, a, l, k1, k2, c_in, E, ii, jj):
    """Φ = (steps k1..k2 composed) applied to diag(c_in[i], c_in[j]) with A_l → diag(a_l,i, a_l,j) + εE and
    every other level at diag(a_i, a_j): jets (..., 3, 2, 2) over the index pairs (ii, jj)."""
    shape = ii.shape

    def level(lv):
        X = torch.zeros(*shape, 3, 2, 2, dtype=F64)
        X[..., 0, 0, 0] = a[lv][ii]
        X[..., 0, 1, 1] = a[lv][jj]
        if lv == l:
            X[..., 1, :, :] = E
        return X

    cache = {}

    def A(lv):
        if lv not in cache:
            cache[lv] = level(lv)
        return cache[lv]

    Phi = torch.zeros(*shape, 3, 2, 2, dtype=F64)
    Phi[..., 0, 0, 0] = c_in[ii]
    Phi[..., 0, 1, 1] = c_in[jj]
    for k in range(k1, k2 + 1):
        M = chain.step_fns[k](A, MATRIX_JET)
        Mt = M.transpose(-1, -2)
        Phi = MATRIX_JET.mm(MATRIX_JET.mm(M, Phi), Mt) + float(chain.q[k]) * MATRIX_JET.one(M)
    return Phi


F64 = torch.float64



def push_divided_differences(push, lam, score_fn, J, init_var, chunk: int = 4096, stepwise=None):
    """h^[1](λ_i, λ_j) and h^[2](λ_i, λ_j, λ_i) (d, d) of h: Σ̂ ↦ output law with the scores score_fn(Σ̂)
    ((..., n, n) → (..., L, n, n), e.g. `plugin_scores`), by Opitz' formula on J = [[λ_i, 1, 0], [0, λ_j, 1],
    [0, 0, λ_i]]."""
    d = lam.numel()
    Jm = torch.zeros(d, d, 3, 3, dtype=F64)
    Jm[..., 0, 0] = Jm[..., 2, 2] = lam.view(d, 1)
    Jm[..., 1, 1] = lam.view(1, d)
    Jm[..., 0, 1] = Jm[..., 1, 2] = 1.0
    A = score_fn(Jm.reshape(d * d, 3, 3))                                 # (d², L, 3, 3)
    H = torch.cat([output_law(push, a, J, init_var, stepwise, function=True) for a in A.split(chunk)])
    return H[:, 0, 1].reshape(d, d), H[:, 0, 2].reshape(d, d)


def _lift(base: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """base ⊗ I₃ + E ⊗ N (N the 3×3 nilpotent shift): the polynomial base + tE truncated after t²,
    as a 6×6 matrix. base, E (..., 2, 2) → (..., 6, 6); index (c, p) ↦ 3c + p."""
    shift = torch.diag(torch.ones(2, dtype=F64), 1)
    kron = lambda X, Y: (X[..., :, None, :, None] * Y[:, None, :]).reshape(*X.shape[:-2], 6, 6)
    return kron(base, torch.eye(3, dtype=F64)) + kron(E, shift)


def _lifted_maps(push, A: torch.Tensor, J: int):
    """The t⁰, t¹, t² coefficients of M(t) and N_j(t) for lifted scores A (B, L, 6, 6): (B, 3, 2, 2) and
    (B, J, 3, 2, 2). One input row per source coordinate c' suffices: the lifted map sends e_(c', 2) to
    Σ_q (M_q e_c') ⊗ e_(2−q), so the output row read at (c, 2 − q) is M_q[c, c']."""
    B = A.shape[0]
    x = torch.zeros(B, 2 * (J + 1), 6, dtype=F64)
    x[:, 0, 2] = x[:, 1, 5] = 1.0

    def noise(j):
        z = torch.zeros(B, 2 * (J + 1), 6, dtype=F64)
        z[:, 2 * j + 2, 2] = z[:, 2 * j + 3, 5] = 1.0
        return z
    out = push(A, x, noise).to(F64).reshape(B, J + 1, 2, 2, 3)        # (source, c', c, p)
    coef = out.flip(-1).permute(0, 1, 4, 3, 2)                          # (source, q, c, c')
    return coef[:, 0], coef[:, 1:]


def _lifted_stepwise_law(stepwise, A: torch.Tensor, init_var):
    """C⁰, C¹, C² (B, 3, 2, 2) of a history-free sampler (see `output_law`) for lifted scores A (B, L, 6, 6):
    per step the coefficients F_q, G_q of the step's maps (one row e_(c', 2) per source coordinate, as in
    `_lifted_maps`), then C_p ← Σ_{a+b+c=p} F_a C_b F_cᵀ + Σ_{a+c=p} G_a G_cᵀ (truncated after t²)."""
    B = A.shape[0]
    x, z = torch.zeros(2, B, 4, 6, dtype=F64)
    x[:, 0, 2] = x[:, 1, 5] = z[:, 2, 2] = z[:, 3, 5] = 1.0
    C = torch.zeros(B, 3, 2, 2, dtype=F64)
    C[:, 0] = init_var * torch.eye(2, dtype=F64)
    for out in stepwise(A, x, z):
        coef = out.reshape(B, 2, 2, 2, 3).flip(-1).permute(0, 1, 4, 3, 2)   # (source, q, c, c')
        F, G = coef[:, 0], coef[:, 1]
        new = torch.zeros_like(C)
        for a in range(3):
            for c in range(3 - a):
                new[:, a + c] += G[:, a] @ G[:, c].transpose(-1, -2)
                for b in range(3 - a - c):
                    new[:, a + b + c] += F[:, a] @ C[:, b] @ F[:, c].transpose(-1, -2)
        C = new
    return C


def _perturbed_law_coefficients(push, a, J, init_var, E, chunk, stepwise=None):
    """C¹, C² (B, 2, 2) of C(A + tE) = C⁰ + tC¹ + t²C² for a batch of 2×2 problems: a (B, L, 2) the
    diagonal scores, E (B, L, 2, 2) the perturbation (non-zero at one level)."""
    out = []
    for ab, Eb in zip(a.split(chunk), E.split(chunk)):
        Alift = _lift(torch.diag_embed(ab), Eb)
        if stepwise is not None:
            C = _lifted_stepwise_law(stepwise, Alift, init_var)
            out.append((C[:, 1], C[:, 2]))
            continue
        Mc, Nc = _lifted_maps(push, Alift, J)                              # (b, 3, 2, 2), (b, J, 3, 2, 2)
        pair = lambda X, p, q: X[..., p, :, :] @ X[..., q, :, :].transpose(-1, -2)
        C1 = init_var * (pair(Mc, 0, 1) + pair(Mc, 1, 0)) + (pair(Nc, 0, 1) + pair(Nc, 1, 0)).sum(1)
        C2 = init_var * (pair(Mc, 0, 2) + pair(Mc, 1, 1) + pair(Mc, 2, 0)) \
            + (pair(Nc, 0, 2) + pair(Nc, 1, 1) + pair(Nc, 2, 0)).sum(1)
        out.append((C1, C2))
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


def _half_second_derivatives(push, lam, a, J, init_var, h, both: bool, chunk, stepwise=None):
    """q_l,ri = ½ d²B²(Σ, C(A + tE))/dt² at t = 0 for E = e_r e_iᵀ at level l (E = e_r e_rᵀ when r = i), and
    with `both` also for E = e_r e_iᵀ + e_i e_rᵀ: (L, d, d) each. Base A = diag(a_l) (a (L, d)); in the
    2×2 block {r, i}, q = Σ_c ρ_c C²_cc + ½ Σ_cc' W_cc' (C¹_cc')² (note §4, ρ, W at base h)."""
    d, L = lam.numel(), a.shape[0]
    rho, W = bures_second_order_weights(lam, h)
    r, i = [t.reshape(-1) for t in torch.meshgrid(torch.arange(d), torch.arange(d), indexing="ij")]
    pairs = torch.stack([a[:, r], a[:, i]], -1).permute(1, 0, 2).reshape(d * d, 1, L, 2).expand(d * d, L, L, 2)
    rho_b = torch.stack([rho[r], rho[i]], -1).repeat_interleave(L, 0)    # (d²·L, 2)
    W_b = torch.stack([torch.stack([W[r, r], W[r, i]], -1), torch.stack([W[i, r], W[i, i]], -1)], -2)
    W_b = W_b.repeat_interleave(L, 0)
    lv, diag = torch.arange(L), (r == i).nonzero()[:, 0].view(-1, 1)
    out = []
    for sym in (False, True)[:1 + both]:
        E = torch.zeros(d * d, L, L, 2, 2, dtype=F64)                    # (pair, perturbed level, level, 2, 2)
        E[:, lv, lv, 0, 1] = 1.0
        if sym:
            E[:, lv, lv, 1, 0] = 1.0
        E[diag, lv, lv] = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64)   # r = i: the (0, 0) entry only
        C1, C2 = _perturbed_law_coefficients(push, pairs.reshape(-1, L, 2), J, init_var, E.reshape(-1, L, 2, 2), chunk,
                                             stepwise)
        q = (rho_b * torch.diagonal(C2, dim1=-2, dim2=-1)).sum(-1) + 0.5 * (W_b * C1 ** 2).sum((-1, -2))
        out.append(q.reshape(d, d, L).permute(2, 0, 1))
    return out


def push_tau_cells(push, lam, a, J, init_var, h, var, cross=None, symmetric=False, chunk=2048,
              stepwise=None) -> torch.Tensor:
    """E[B²(Σ, C(A + Δ))] − B²(Σ, C(A)) at second order in Δ, per cell (d, d) summed over levels: A = diag(a_l)
    per level (a (L, d)), Δ_l centred, independent across levels, entries uncorrelated except
    Cov(Δ_l,ri, Δ_l,ir) = cross_l,ri (var, cross (L, d, d)); symmetric: Δ_ri = Δ_ir (var = its variance).
    Cell (r, i) = Σ_l var q_l,ri (+ ½ cross_l,ri H_l,ri, H = ∂²B²/∂Δ_ri∂Δ_ir = q^sym − q_ri − q_ir)."""
    both = symmetric or (cross is not None and bool((cross.abs() > 0).any()))
    qs = _half_second_derivatives(push, lam, a, J, init_var, h, both, chunk, stepwise)
    offd = ~torch.eye(lam.numel(), dtype=torch.bool)
    if symmetric:       # one variable per unordered pair, read by the cells (r, i) and (i, r)
        q = torch.where(offd, qs[1], qs[0])
        return (var * q * torch.where(offd, 0.5, 1.0)).sum(0)
    out = var * qs[0]
    if both:
        H = qs[1] - qs[0] - qs[0].transpose(-1, -2)
        out = out + torch.where(offd, 0.5 * cross * H, torch.zeros_like(H))
    return out.sum(0)


# ------------------------------------------------------------------------------------------ law maps

def _jet_divided_differences(lam, P, Q, v0):
    """h^[1], h^[2] (d, d) of C = P(Σ̂) C_0 P(Σ̂)ᵀ + Q(Σ̂) under Σ̂ = Σ + E, with C_0 = diag(v0) fixed (e.g.
    VP's init=prior: Σ_T of the true Σ, not a function of Σ̂). In Σ's eigenbasis, to second order in E,

        C¹_ij = E_ij [p^[1]_ij (v0_i p_i + v0_j p_j) + Q^[1]_ij],
        C²_ii = Σ_m E_im² [2 p_i p^[2]_imi v0_i + (p^[1]_im)² v0_m + Q^[2]_imi],

    the brackets replacing h^[1] and h^[2] in K_N (for constant v0 they are the divided differences of
    h = p² v0 + Q, by the product rule). P, Q: series (d, n) of `LinearChain.propagator_series`."""
    p1, p2 = divided_differences_from_jets(lam, P)
    Q1, Q2 = divided_differences_from_jets(lam, Q)
    vp = v0 * P[:, 0]
    return p1 * (vp.view(-1, 1) + vp.view(1, -1)) + Q1, 2 * vp.view(-1, 1) * p2 + p1 ** 2 * v0.view(1, -1) + Q2


@dataclass
class ChainLaw:
    """The law map of a `LinearChain` started from N(0, diag(init_var)) (a number or (d,) per eigenvalue)."""

    chain: LinearChain
    init_var: float | torch.Tensor = 1.0

    def _v0(self, lam):
        return torch.as_tensor(self.init_var, dtype=F64).expand_as(lam).clone()

    def variance(self, a: torch.Tensor) -> torch.Tensor:
        """h per eigenvalue for diagonal scores a (..., L, d) → (..., d)."""
        return self.chain.variance(a, self.init_var)

    def series(self, lam, objective, alphas, stds, budget=None) -> torch.Tensor:
        """(h, h′, h″/2, h‴/6) (d, 4) of the output variance as a function of Σ̂'s eigenvalue, through the
        objective's scores (constant init_var)."""
        P, Q = self.chain.propagator_series(objective.score_series(lam, alphas, stds, budget))
        return float(self.init_var) * series_mm(P, P) + Q

    def divided_differences(self, lam, objective, alphas, stds, budget=None):
        """h^[1], h^[2] (d, d) through the chain's jets (`_jet_divided_differences`)."""
        P, Q = self.chain.propagator_series(objective.score_series(lam, alphas, stds, budget))
        return _jet_divided_differences(lam, P, Q, self._v0(lam))

    def tau_cells(self, lam, a, h, var, cross=None, symmetric=False) -> torch.Tensor:
        """Second-order cells (d, d) of the score error Δ (var, cross (L, d, d), τ included): `chain_tau_kernel`."""
        rho, W = bures_second_order_weights(lam, h)
        return chain_tau_kernel(self.chain, a, var, rho, W, self.init_var, symmetric,
                                cross if not symmetric else None)

    def diagonal_tau_cells(self, lam, a, var, rho, W) -> torch.Tensor:
        """The cells (d,) of diagonal fluctuations only (circulant scores): `chain_diagonal_tau_cells`."""
        return chain_diagonal_tau_cells(self.chain, a, var, rho, W, self.init_var)


@dataclass
class PushLaw:
    """The law map of a push (a sampler run on rows, `gsm.theory.chain.output_law`): J noise injections,
    start N(0, init_var·I), `stepwise` the per-step recursion of history-free samplers (or None)."""

    push: Callable
    J: int
    init_var: float = 1.0
    stepwise: Callable | None = None

    def variance(self, a: torch.Tensor) -> torch.Tensor:
        return output_variance(self.push, a, self.J, self.init_var, self.stepwise)

    def divided_differences(self, lam, objective, alphas, stds, budget=None):
        """Opitz' formula through the push on 3×3 Jordan blocks (`push_divided_differences`)."""
        return push_divided_differences(self.push, lam, lambda X: objective.score_function(X, alphas, stds, budget),
                                        self.J, self.init_var, stepwise=self.stepwise)

    def tau_cells(self, lam, a, h, var, cross=None, symmetric=False) -> torch.Tensor:
        return push_tau_cells(self.push, lam, a, self.J, self.init_var, h, var, None if symmetric else cross,
                              symmetric, stepwise=self.stepwise)
