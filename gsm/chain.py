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


# ------------------------------------------------------------------------------ divided differences

def inverse_affine_series(lam: torch.Tensor, alpha2: torch.Tensor, s2: torch.Tensor, order: int = 4) -> torch.Tensor:
    """Series of the plug-in score f_l(λ) = 1/(α_l² λ + s_l²) at every λ: f^{(r)}/r! = (−α²)ʳ f^{r+1}.
    lam (d,), alpha2, s2 (L,) → (L, d, order)."""
    f = 1.0 / (alpha2.view(-1, 1) * lam.view(1, -1) + s2.view(-1, 1))
    r = torch.arange(order, dtype=_F64)
    return (-alpha2.view(-1, 1, 1)) ** r * f.unsqueeze(-1) ** (r + 1)


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
    J = torch.zeros(d, d, 3, 3, dtype=_F64)
    J[..., 0, 0] = J[..., 2, 2] = lam.view(d, 1)
    J[..., 1, 1] = lam.view(1, d)
    J[..., 0, 1] = J[..., 1, 2] = 1.0
    H = h_on_matrix(J)
    return H[..., 0, 0].diagonal(), H[..., 0, 1], H[..., 0, 2]


# ------------------------------------------------------------------------------------------ τ kernel

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
    M = cI − gA this is `gsm.diffusion.ddpm_tau_kernel`. `cross` (L, d, d): Cov(Δ_ij, Δ_ji)/τ (i ≠ j; the
    finite-budget transient of `gsm.diffusion.level_sgd_transient`) adds W P Q c + ρ_i c ∂²C_ii/∂Δ_ij∂Δ_ji,
    the mixed derivative from the jet along E_ij + E_ji; for multi-stage steps the first-order change
    of M_k is its derivative δM = Σ_(stages reading l) ∂M/∂G_i [−r_i Δ] (e.g. Heun:
    M = I + (h/2)(G₁ + G₂ + h G₂G₁), δM = (h/2)(δG₁ + δG₂ + h(δG₂ G₁ + G₂ δG₁))), and its
    second-order change (RK4: a midpoint level in two stages) enters Φ² — both carried by the jets.
    """
    a = a.to(_F64)
    d = a.shape[-1]
    m = chain.factors(a)                                             # (K, d)
    c = chain.variance(a, init_var, trajectory=True)                 # (K+1, d)
    # suffix products: after[k] = Π_{j≥k} m_j (after[K] = 1)
    after = torch.ones(chain.K + 1, d, dtype=_F64)
    for k in range(chain.K - 1, -1, -1):
        after[k] = after[k + 1] * m[k]
    out = torch.zeros(d, d, dtype=_F64)
    eye = torch.eye(d, dtype=_F64)
    ii, jj = torch.meshgrid(torch.arange(d), torch.arange(d), indexing="ij")
    offdiag = ~eye.bool()
    for l, S in enumerate(chain.steps_reading()):
        if not S:
            continue
        k1, k2 = min(S), max(S)
        ell = after[k2 + 1]
        li, lj = ell[ii], ell[jj]

        def jet(*entries):
            # pair jets (d, d, 3, 2, 2): indices (i, j) ↦ block {i, j}, direction Σ E_pr over `entries`
            E = torch.zeros(2, 2, dtype=_F64)
            for p, r in entries:
                E[p, r] = 1.0
            Phi = _block_jet(chain, a, l, k1, k2, c[k1], E, ii, jj)
            return li * lj * Phi[..., 1, 0, 1], li ** 2 * Phi[..., 2, 0, 0]    # ∂C_ij, ½∂²C_ii along E

        # each off-diagonal variable is visited twice ((i, j) and (j, i)): at each visit half of
        # ½W(C¹_ij² + C¹_ji²) = ½W E[C¹²], and the second-order change of C at the visit's first index
        if symmetric:
            P, P2 = jet((0, 1), (1, 0))
            cell = 0.5 * W * V[l] * P ** 2 + rho.view(-1, 1) * V[l] * P2
        else:
            P, P2 = jet((0, 1))                      # Δ_ij
            Q, Q2 = jet((1, 0))                      # Δ_ji
            cell = 0.5 * W * (V[l] * P ** 2 + V[l].T * Q ** 2) + rho.view(-1, 1) * (V[l] * P2 + V[l].T * Q2)
            if cross is not None:                    # Cov(Δ_ij, Δ_ji): the mixed terms
                _, PQ2 = jet((0, 1), (1, 0))
                cell = cell + cross[l] * (W * P * Q + rho.view(-1, 1) * (PQ2 - P2 - Q2))
        out += torch.where(offdiag, cell, 0.0)
        # diagonal entries Δ_ii: 1×1 problem (the 2×2 block at (i, i) with E = e_0 e_0ᵀ)
        E = torch.zeros(2, 2, dtype=_F64)
        E[0, 0] = 1.0
        idx = torch.arange(d)
        Phi = _block_jet(chain, a, l, k1, k2, c[k1], E, idx, idx)
        Vd = V[l].diagonal()
        out += torch.diag(0.5 * W.diagonal() * Vd * (ell ** 2 * Phi[..., 1, 0, 0]) ** 2
                          + rho * Vd * ell ** 2 * Phi[..., 2, 0, 0])
    return out


def _block_jet(chain, a, l, k1, k2, c_in, E, ii, jj):
    """Φ = (steps k1..k2 composed) applied to diag(c_in[i], c_in[j]) with A_l → diag(a_l,i, a_l,j) + εE and
    every other level at diag(a_i, a_j): jets (..., 3, 2, 2) over the index pairs (ii, jj)."""
    shape = ii.shape

    def level(lv):
        X = torch.zeros(*shape, 3, 2, 2, dtype=_F64)
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

    Phi = torch.zeros(*shape, 3, 2, 2, dtype=_F64)
    Phi[..., 0, 0, 0] = c_in[ii]
    Phi[..., 0, 1, 1] = c_in[jj]
    for k in range(k1, k2 + 1):
        M = chain.step_fns[k](A, MATRIX_JET)
        Mt = M.transpose(-1, -2)
        Phi = _jet_mm(_jet_mm(M, Phi), Mt) + float(chain.q[k]) * _jet_one(M)
    return Phi
