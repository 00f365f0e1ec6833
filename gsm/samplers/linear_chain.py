"""Linear Gaussian chains: the exact law of any sampler whose steps are linear in x for a linear score.

A chain of K steps, in the order they are applied (k = 0..K−1),

    x_{k+1} = M_k x_k + √q_k ξ_k,   ξ_k ~ N(0, I),   x_0 ~ N(0, C_0),

has the Gaussian law N(0, C_K) with C_{k+1} = M_k C_k M_kᵀ + q_k I. Each step matrix M_k is a polynomial
(with scalar coefficients) in the score matrices A_l at the *levels* l the step evaluates, s_l(x) = −A_l x:
a one-stage step is M = c I − g A_l, an explicit Runge–Kutta step on y' = G(t) y is a polynomial in the
stage matrices G_i (`explicit_rk_step`). `LinearChain` keeps, per step, a function building M_k from
the levels' matrices in a given *algebra*:

* `FULL`  — (..., d, d) matrices, any A_l (non-symmetric, non-commuting): `covariance`, `sample`;
* `DIAG`  — (..., d) eigenvalues, when every A_l is diagonal in one basis (a function of Σ or Σ̂):
  O(d·K) `variance` / `sample_diagonal`;
* `jet_algebra(n)` — truncated Taylor series f(λ + x) = Σ_{r<n} f^{(r)}(λ)/r! xʳ per eigenvalue, i.e.
  the matrix function on a Jordan block (Opitz): h, h′, h″, h‴ of the output-variance map in O(d·K),
  from which `divided_differences_from_jets` gets h^[1], h^[2] for all pairs in O(d²);
* `matrix_jet` — second-order jets X₀ + εX₁ + ε²X₂ of 2×2 matrices, for the τ kernel (`chain_tau_kernel`).

Reuse: a sampler (EDM Heun, a diffusers scheduler, ...) needs only `step_fns` — one callable
(A, alg) ↦ M_k per step, where A(l) returns level l's score in the algebra — and the noise q_k.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

F64 = torch.float64


_F64 = torch.float64


# ------------------------------------------------------------------------------------------ algebras

@dataclass(frozen=True)
class Algebra:
    """How step matrices are multiplied: mm(X, Y) and the unit `one(like)` (shaped like an element)."""

    name: str
    mm: Callable
    one: Callable


def _eye_like(X):
    return torch.eye(X.shape[-1], dtype=X.dtype, device=X.device).expand_as(X)


def _series_mm(X, Y):
    """Product of truncated series (..., n): Z_r = Σ_{p+q=r} X_p Y_q (upper-triangular Toeplitz product)."""
    n = X.shape[-1]
    Z = torch.zeros(torch.broadcast_shapes(X.shape, Y.shape), dtype=X.dtype, device=X.device)
    for p in range(n):
        Z[..., p:] += X[..., p:p + 1] * Y[..., :n - p]
    return Z


def _series_one(X):
    one = torch.zeros_like(X)
    one[..., 0] = 1.0
    return one


def _jet_mm(X, Y):
    """(X₀ + εX₁ + ε²X₂)(Y₀ + εY₁ + ε²Y₂) mod ε³, elements (..., 3, n, n)."""
    X0, X1, X2 = X.unbind(-3)
    Y0, Y1, Y2 = Y.unbind(-3)
    return torch.stack([X0 @ Y0, X0 @ Y1 + X1 @ Y0, X0 @ Y2 + X1 @ Y1 + X2 @ Y0], -3)


def _jet_one(X):
    one = torch.zeros_like(X)
    one[..., 0, :, :] = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    return one


FULL = Algebra("full", torch.matmul, _eye_like)


DIAG = Algebra("diag", torch.mul, torch.ones_like)


SERIES = Algebra("series", _series_mm, _series_one)


MATRIX_JET = Algebra("matrix_jet", _jet_mm, _jet_one)


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
    n_levels L (levels are 0..L−1)."""

    step_fns: list
    q: torch.Tensor
    levels: list
    n_levels: int

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
        A = A.to(_F64)
        d = A.shape[-1]
        eye = torch.eye(d, dtype=_F64, device=A.device)
        C = (init_cov * eye if not torch.is_tensor(init_cov) else init_cov.to(_F64)).expand(*A.shape[:-3], d, d)
        traj = [C]
        for k in range(self.K):
            M = self.matrices(k, A, FULL)
            C = M @ C @ M.transpose(-1, -2) + float(self.q[k]) * eye
            if trajectory:
                traj.append(C)
        return torch.stack(traj, -3) if trajectory else C

    def variance(self, a: torch.Tensor, init_var=1.0, trajectory: bool = False):
        """The same law when every A_l = U diag(a_l) Uᵀ (one basis): v ← m_k² v + q_k per eigenvalue,
        a (..., L, d) → (..., d), or (..., K+1, d) with `trajectory`. O(d·K)."""
        a = a.to(_F64)
        v = torch.as_tensor(init_var, dtype=_F64, device=a.device).expand_as(a[..., 0, :])
        traj = [v]
        for k in range(self.K):
            m = self.matrices(k, a, DIAG)
            v = m * m * v + float(self.q[k])
            if trajectory:
                traj.append(v)
        return torch.stack(traj, -2) if trajectory else v

    def factors(self, a: torch.Tensor) -> torch.Tensor:
        """The step factors m_k (eigenvalues of M_k) for diagonal scores a (..., L, d) → (..., K, d)."""
        return torch.stack([self.matrices(k, a.to(_F64), DIAG) for k in range(self.K)], -2)

    def propagator_series(self, f: torch.Tensor):
        """The output law as a function of the eigenvalue λ, when each level's score is a function of λ
        given as truncated series f (L, d, n) (f_l(λ + x) = Σ_r f[l, :, r] xʳ): C_K = P C_0 Pᵀ + Q with
        P = Π_k m_k and Q from q ← m_k² q + q_k (q = 0 at the start), both as series (d, n) (coefficients
        h, h′, h″/2, ...). For C_0 = v·I the output variance map is h = P² v + Q."""
        one = _series_one(f[0])
        P, Q = one, torch.zeros_like(one)
        for k in range(self.K):
            m = self.matrices(k, f, SERIES)
            P = _series_mm(m, P)
            Q = _series_mm(_series_mm(m, m), Q) + float(self.q[k]) * one
        return P, Q

    def sample(self, A: torch.Tensor, x: torch.Tensor, generator=None) -> torch.Tensor:
        """Runs the chain on particles x (R, M, d) with scores A (R, L, d, d): x ← x M_kᵀ + √q_k ξ."""
        A = A.to(x.dtype)
        for k in range(self.K):
            x = noisy_linear_step(x, self.matrices(k, A, FULL).transpose(-1, -2), float(self.q[k]), generator)
        return x

    def sample_diagonal(self, a: torch.Tensor, x: torch.Tensor, generator=None) -> torch.Tensor:
        """The chain in the scores' eigenbasis: x (..., M, d) coordinates, a (..., L, d): x ← m_k x + √q_k ξ."""
        a = a.to(x.dtype)
        for k in range(self.K):
            x = x * self.matrices(k, a, DIAG).unsqueeze(-2)
            q = float(self.q[k])
            if q > 0:
                x = x + math.sqrt(q) * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
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
