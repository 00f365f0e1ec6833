"""Autograd references for the tests: the exact ULA law in Kronecker form and the second-order contraction
½ Σ Cov(Δ_p, Δ_q) ∂²B²/∂Δ_p∂Δ_q of any covariance map, by forward-mode autograd (torch.func.jvp twice).
Written independently of gsm's closed forms and jets (gsm.theory.langevin, gsm.theory.law), which the tests
check against them."""
from __future__ import annotations

import math

import torch
from torch.func import jvp, vmap

from gsm.theory.bures import bures_second_order_weights

F64 = torch.float64


def ula_covariance(A, gamma, steps=None, init_var=1.0):
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
        df = lambda t: jvp(f, (t,), (torch.ones((), dtype=F64),))[1]
        C1, C2 = jvp(df, (torch.zeros((), dtype=F64),), (torch.ones((), dtype=F64),))
        return 0.5 * (rho_p * torch.diagonal(C2)).sum() + 0.5 * (W_p * C1 ** 2).sum()
    return quad


def _one_hot_directions(pattern, lead):
    """The 2×2 direction `pattern` at one leading index at a time (zero at the others): (L, *lead, 2, 2)."""
    L = math.prod(lead)
    U = torch.zeros(L, L, 2, 2, dtype=F64)
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
    lam = torch.as_tensor(eigenvalues, dtype=F64)
    score = torch.as_tensor(score, dtype=F64)
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
    E01 = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=F64)
    E00 = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64)
    # entry (r, i) moves the off-diagonal of its block, entry (r, r) the block's (0, 0) only
    q = torch.where((r == i)[:, None], along(E00), along(E01)).T.reshape(*lead, d, d)
    out = var * q
    if cross is not None and (cross.abs() > 0).any():
        q_sum = along(E01 + E01.T).T.reshape(*lead, d, d)
        H = q_sum - q - q.transpose(-1, -2)     # ∂²B²/∂Δ_ri∂Δ_ir
        offd = ~torch.eye(d, dtype=torch.bool)
        out = out + torch.where(offd, 0.5 * cross * H, torch.zeros_like(H))
    return out


