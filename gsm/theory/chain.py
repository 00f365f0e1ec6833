"""Linear Gaussian chains: the exact law of any sampler whose steps are linear in x for a linear score.

A chain of K steps, in the order they are applied (k = 0..K−1),

    x_{k+1} = M_k x_k + √q_k ξ_k,   ξ_k ~ N(0, I),   x_0 ~ N(0, C_0),

has the Gaussian law N(0, C_K) with C_{k+1} = M_k C_k M_kᵀ + q_k I. Each step matrix M_k is a polynomial
(with scalar coefficients) in the score matrices A_l at the *levels* l the step evaluates, s_l(x) = −A_l x:
a one-stage step is M = c I − g A_l, an explicit Runge–Kutta step on y' = G(t) y is a polynomial in the
stage matrices G_i (`explicit_rk_step`). `LinearChain` keeps, per step, a function building M_k from
the levels' matrices in a given *algebra*:

* `FULL`  — (..., d, d) matrices, any A_l (non-symmetric, non-commuting): `covariance`, `sample`, `push`;
* `DIAG`  — (..., d) eigenvalues, when every A_l is diagonal in one basis (a function of Σ or Σ̂):
  O(d·K) `variance` / `sample_diagonal` / `run_diagonal` (also the Fourier-diagonal case);
* `SERIES` — truncated Taylor series f(λ + x) = Σ_{r<n} f^{(r)}(λ)/r! xʳ per eigenvalue, i.e.
  the matrix function on a Jordan block (Opitz): h, h′, h″/2, h‴/6 of the output-variance map in O(d·K)
  (`propagator_series`), from which `gsm.theory.law.divided_differences_from_jets` gets h^[1], h^[2];
* `MATRIX_JET` — second-order jets X₀ + εX₁ + ε²X₂ of 2×2 matrices, for the τ kernel
  (`gsm.theory.law.chain_tau_kernel`).

A linear sampler *is* its step map: `step_fns`, one callable (A, alg) ↦ M_k per step, where A(l) returns
level l's score in the algebra, and the noise q_k. The exact laws (full, per eigenvalue, Fourier-diagonal)
and the whole prediction (`gsm.theory.law.ChainLaw`, `gsm.theory.prediction`) derive from it. A sampler
whose state is not x alone (multistep schedulers) is a *push* instead: `push(A, x, noise)` run on rows
(`linear_maps`, `output_law`, `exact_law`; `gsm.theory.law.PushLaw`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from gsm.algebra import DIAG, FULL, SERIES, Algebra, series_mm, series_one

F64 = torch.float64


# ------------------------------------------------------------------------------------- step matrices

def affine_step(c: float, g: float, A, alg: Algebra):
    """M = c I − g A: one score evaluation (EM, EI, DDPM-type steps)."""
    return c * alg.one(A) - g * A


def explicit_rk_step(G: Sequence, h: float, a: Sequence[Sequence[float]], b: Sequence[float], alg: Algebra):
    """Step matrix of an explicit Runge–Kutta method on the linear ODE y′ = G(t) y, one step of size h:

        K_i = G_i (I + h Σ_{j<i} a_ij K_j),   M = I + h Σ_i b_i K_i,

    G_i = G(t + c_i h) the stage matrices (elements of `alg`), (a, b) the Butcher tableau. Exact for
    non-commuting G_i (the products keep their order)."""
    one = alg.one(G[0])
    Ks = []
    for i, Gi in enumerate(G):
        inner = one
        for j in range(i):
            if a[i][j] != 0:
                inner = inner + h * a[i][j] * Ks[j]
        Ks.append(alg.mm(Gi, inner))
    M = one
    for bi, Ki in zip(b, Ks):
        if bi != 0:
            M = M + h * bi * Ki
    return M


# -------------------------------------------------------------------------------------------- chain

StepFn = Callable[[Callable[[int], torch.Tensor], Algebra], torch.Tensor]

# Steps per block of `LinearChain.factor_blocks`: a block of b×d factors stays under torch's intra-op grain
# (32768 elements), so each op runs on one thread (no barrier with a descheduled thread on a busy machine)
# on operands in cache (full (K, d) temporaries were several times slower here: fresh pages).
BLOCK_ELEMENTS = 32768


@dataclass(frozen=True)
class StackedSteps:
    """The steps of a chain evaluated many at once in the diagonal algebra: fn(A, alg, steps) returns the
    factors m_k of the steps k in the slice `steps`, stacked (..., b, d), where A(i) (..., b, d) is the score
    that stage i of each of those steps reads (level reads[k, i]). reads: (K, S) int64."""

    fn: Callable
    reads: torch.Tensor


def noisy_linear_step(x: torch.Tensor, Mt: torch.Tensor, q: float, generator=None) -> torch.Tensor:
    """One step x ← x Mᵀ + √q ξ of a linear chain on particles x (R, M, d), Mt = Mᵀ (R, d, d): one fused
    `baddbmm` when q > 0."""
    if q <= 0:
        return x @ Mt
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.baddbmm(noise, x, Mt, beta=math.sqrt(q))


@dataclass
class LinearChain:
    """x_{k+1} = M_k x_k + √q_k ξ_k, k = 0..K−1 (application order).

    step_fns[k](A, alg) returns M_k in the algebra `alg`, A(l) being the score of level l there;
    q (K,) float64 the step noise variances (isotropic); levels[k] the levels step k reads;
    n_levels L (levels are 0..L−1); stacked: the same step map evaluated for a block of steps at once
    (`StackedSteps`, diagonal algebra only; None: step by step)."""

    step_fns: list
    q: torch.Tensor
    levels: list
    n_levels: int
    stacked: StackedSteps | None = None     # the same steps, many at once (diagonal algebra), when the sampler has them

    @property
    def K(self) -> int:
        return len(self.step_fns)

    def steps_reading(self) -> list[list[int]]:
        """For each level, the (consecutive) steps that read it."""
        out = [[] for _ in range(self.n_levels)]
        for k, lv in enumerate(self.levels):
            for l in set(lv):
                out[l].append(k)
        return out

    def matrices(self, k: int, A: torch.Tensor, alg: Algebra):
        """M_k with the levels' scores A (..., L, *elem): A(l) = A[..., l, *elem]."""
        nd = {"full": 2, "diag": 1, "series": 2, "matrix_jet": 3}[alg.name]     # dims of one element
        return self.step_fns[k](lambda l: A.select(A.ndim - nd - 1, l), alg)

    def covariance(self, A: torch.Tensor, init_cov=1.0, trajectory: bool = False):
        """C_K for scores A (..., L, d, d) from C_0 = init_cov (a number: ·I, or (..., d, d)):
        C ← M_k C M_kᵀ + q_k I. With `trajectory`, (C_0..C_K) stacked as (..., K+1, d, d)."""
        A = A.to(F64)
        d = A.shape[-1]
        eye = torch.eye(d, dtype=F64, device=A.device)
        C = (init_cov * eye if not torch.is_tensor(init_cov) else init_cov.to(F64)).expand(*A.shape[:-3], d, d)
        traj = [C]
        for k in range(self.K):
            M = self.matrices(k, A, FULL)
            C = M @ C @ M.transpose(-1, -2) + float(self.q[k]) * eye
            if trajectory:
                traj.append(C)
        return torch.stack(traj, -3) if trajectory else C

    def factor_blocks(self, a: torch.Tensor):
        """(k0, m) over consecutive blocks of steps: m (..., b, d) the step factors m_k, k = k0..k0+b−1, for
        diagonal scores a (..., L, d), in a's dtype. With `stacked`, b·(batch)·d ≤ BLOCK_ELEMENTS steps per
        block; else one step at a time."""
        if self.stacked is None:
            for k in range(self.K):
                yield k, self.matrices(k, a, DIAG).unsqueeze(-2)
            return
        rows = max(1, BLOCK_ELEMENTS // max(a[..., 0, :].numel(), 1))
        reads = self.stacked.reads.to(a.device)
        for k0 in range(0, self.K, rows):
            ks = slice(k0, min(k0 + rows, self.K))
            idx = reads[ks]
            yield k0, self.stacked.fn(lambda i: a.index_select(-2, idx[:, i]), DIAG, ks)

    def diagonal_propagator(self, a: torch.Tensor, init_var=0.0):
        """The law per eigenvalue when every A_l = U diag(a_l) Uᵀ: (P, h), (..., d) float64, for a (..., L, d),

            h: v ← m_k² v + q_k from v_0 = init_var,   P = Π_k m_k,

        so that from any other start v′ the output variance is h + P²(v′ − v_0) (init_var = 0: h = Q =
        Σ_k q_k Π_{j>k} m_j²). O(d·K): the factors by blocks (`factor_blocks`), then three in-place vector ops
        per step in the recursion's order, the same numbers as step by step (a torch.cumprod scan over the
        steps is ~5x slower at d = 3072, K = 1000: docs/performance.md (6))."""
        a = a.to(F64)
        P = torch.ones_like(a[..., 0, :])
        v = torch.as_tensor(init_var, dtype=F64, device=a.device) + torch.zeros_like(P)     # a fresh (..., d)
        for k0, m in self.factor_blocks(a):
            for mk, m2, qk in zip(m.unbind(-2), (m * m).unbind(-2), self.q[k0:].tolist()):
                P.mul_(mk)
                v.mul_(m2)
                if qk != 0:
                    v.add_(qk)
        return P, v

    def variance(self, a: torch.Tensor, init_var=1.0, trajectory: bool = False):
        """The same law when every A_l = U diag(a_l) Uᵀ (one basis): v ← m_k² v + q_k per eigenvalue,
        a (..., L, d) → (..., d) (`diagonal_propagator`), or (..., K+1, d) with `trajectory`. O(d·K)."""
        a = a.to(F64)
        if not trajectory:
            return self.diagonal_propagator(a, init_var)[1]
        v = torch.as_tensor(init_var, dtype=F64, device=a.device).expand_as(a[..., 0, :])
        traj = [v]
        for k0, m in self.factor_blocks(a):
            for mk, qk in zip(m.unbind(-2), self.q[k0:].tolist()):
                v = mk * mk * v + qk
                traj.append(v)
        return torch.stack(traj, -2)

    def factors(self, a: torch.Tensor) -> torch.Tensor:
        """The step factors m_k (eigenvalues of M_k) for diagonal scores a (..., L, d) → (..., K, d)."""
        return torch.cat([m for _, m in self.factor_blocks(a.to(F64))], -2)

    def propagator_series(self, f: torch.Tensor):
        """The output law as a function of the eigenvalue λ, when each level's score is a function of λ
        given as truncated series f (L, d, n) (f_l(λ + x) = Σ_r f[l, :, r] xʳ): C_K = P C_0 Pᵀ + Q with
        P = Π_k m_k and Q from q ← m_k² q + q_k (q = 0 at the start), both as series (d, n) (coefficients
        h, h′, h″/2, ...). For C_0 = v·I the output variance map is h = P² v + Q."""
        one = series_one(f[0])
        P, Q = one, torch.zeros_like(one)
        for k in range(self.K):
            m = self.matrices(k, f, SERIES)
            P = series_mm(m, P)
            Q = series_mm(series_mm(m, m), Q) + float(self.q[k]) * one
        return P, Q

    def sample(self, A: torch.Tensor, x: torch.Tensor, generator=None) -> torch.Tensor:
        """Runs the chain on particles x (R, M, d) with scores A (R, L, d, d): x ← x M_kᵀ + √q_k ξ."""
        A = A.to(x.dtype)
        for k in range(self.K):
            x = noisy_linear_step(x, self.matrices(k, A, FULL).transpose(-1, -2), float(self.q[k]), generator)
        return x

    def sample_diagonal(self, a: torch.Tensor, x: torch.Tensor, generator=None) -> torch.Tensor:
        """The chain in the scores' eigenbasis: x (..., M, d) coordinates, a (..., L, d): x ← m_k x + √q_k ξ."""
        noise = lambda: torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.run_diagonal(a.unsqueeze(-3), x.clone(), noise)

    def run_diagonal(self, a: torch.Tensor, x: torch.Tensor, noise) -> torch.Tensor:
        """x ← m_k x + √q_k ξ in place, per coefficient: x (..., d) (real or complex, e.g. Fourier
        coefficients), a (..., L, d) broadcasting against x's leading dims, noise() a fresh ξ like x."""
        a = a.to(x.real.dtype)
        for k0, m in self.factor_blocks(a):
            for mk, q in zip(m.unbind(-2), self.q[k0:].tolist()):
                x.mul_(mk)
                if q > 0:
                    x.add_(noise(), alpha=math.sqrt(q))
        return x

    @property
    def J(self) -> int:
        """The number of noise injections (steps with q_k > 0)."""
        return int((self.q > 0).sum())

    def push(self, A: torch.Tensor, x: torch.Tensor, noise=None, generator=None) -> torch.Tensor:
        """Runs the chain on the rows of x (B, m, n) with scores A (B, L, n, n); noise(j) gives the j-th
        injection (None: drawn from `generator`). The chain as a push (`output_law`, `exact_law`)."""
        j = 0
        for k in range(self.K):
            x = x @ self.matrices(k, A.to(x.dtype), FULL).transpose(-1, -2)
            q = float(self.q[k])
            if q > 0:
                xi = noise(j) if noise is not None else torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                                                    device=x.device)
                x, j = x + math.sqrt(q) * xi, j + 1
        return x


def source_rows(n: int, J: int, batch: int):
    """Inputs that read off M and N_j in one push: x (B, (J+1)n, n) holds I_n in block 0, and noise(j)
    holds I_n in block j+1 (zeros elsewhere)."""
    eye = torch.eye(n, dtype=F64)
    x = torch.zeros(batch, (J + 1) * n, n, dtype=F64)
    x[:, :n] = eye

    def noise(j):
        z = torch.zeros(batch, (J + 1) * n, n, dtype=F64)
        z[:, (j + 1) * n:(j + 2) * n] = eye
        return z
    return x, noise


def linear_maps(push, A: torch.Tensor, J: int):
    """M (B, n, n) and N (B, J, n, n) of x_out = M x_T + Σ_j N_j ξ_j, by pushing the n basis vectors of
    each source (x_T and the J noise injections) through the sampler as one batch. A: (B, L, n, n)."""
    B, n = A.shape[0], A.shape[-1]
    x, noise = source_rows(n, J, B)
    out = push(A.to(F64), x, noise).to(F64).reshape(B, J + 1, n, n).transpose(-1, -2)
    return out[:, 0], out[:, 1:]


def congruence_law(M: torch.Tensor, N: torch.Tensor, init_var) -> torch.Tensor:
    """C = v M Mᵀ + Σ_j N_j N_jᵀ: the law of x_out from x_T ~ N(0, vI). (B, n, n), (B, J, n, n) → (B, n, n)."""
    return init_var * M @ M.transpose(-1, -2) + (N @ N.transpose(-1, -2)).sum(1)


def function_law(M: torch.Tensor, N: torch.Tensor, init_var) -> torch.Tensor:
    """h = v M² + Σ_j N_j²: the output variance as a matrix function, for maps that are functions of one
    matrix (all commute; no transposes, so that non-symmetric arguments such as Opitz' J work)."""
    return init_var * M @ M + (N @ N).sum(1)


def output_law(push, A: torch.Tensor, J: int, init_var, stepwise=None, function: bool = False) -> torch.Tensor:
    """`congruence_law` (or with `function`, `function_law`) of the sampler for scores A (B, L, n, n).

    stepwise: for samplers whose steps keep no history (the state is x alone), a callable
    stepwise(A, x, z) yielding, step by step, the step applied to the fresh rows x (B, m, n) with noise rows z;
    then F_k, G_k come from x = [I; 0], z = [0; I] and C ← F_k C F_kᵀ + G_k G_kᵀ (function: F_k C F_k + G_k G_k),
    O(K) instead of the O(K·J) of pushing every noise source through the whole loop."""
    prod = (lambda X, Y: X @ Y) if function else (lambda X, Y: X @ Y.transpose(-1, -2))
    if stepwise is None:
        M, N = linear_maps(push, A, J)
        return init_var * prod(M, M) + prod(N, N).sum(1)
    B, n = A.shape[0], A.shape[-1]
    eye = torch.eye(n, dtype=F64)
    x, z = torch.zeros(2, B, 2 * n, n, dtype=F64)
    x[:, :n], z[:, n:] = eye, eye
    C = init_var * eye.expand(B, n, n)
    for out in stepwise(A.to(F64), x, z):
        F, G = out[:, :n].transpose(-1, -2), out[:, n:].transpose(-1, -2)
        C = prod(F @ C, F) + prod(G, G)
    return C


def exact_law(push, A: torch.Tensor, J: int, init_var, chunk: int = 64, stepwise=None) -> torch.Tensor:
    """The exact law C (B, d, d) of the sampler's output for score matrices A (B, L, d, d), in chunks of
    `chunk` replicates (stepwise: see `output_law`)."""
    return torch.cat([output_law(push, a, J, init_var, stepwise) for a in A.split(chunk)])


def output_variance(push, a: torch.Tensor, J: int, init_var, stepwise=None) -> torch.Tensor:
    """h(λ), the output variance per eigenvalue for per-eigenvalue scores a (L, d) → (d,) (n = 1, batched)."""
    return output_law(push, a.T.reshape(a.shape[1], -1, 1, 1), J, init_var, stepwise)[:, 0, 0]
