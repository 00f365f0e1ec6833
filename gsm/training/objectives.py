"""Training objectives and the statistics of the score error they leave (docs/theory.md §2, §11).

An objective says what a linear score learns at each level the sampler reads, and owns the statistics
of its error that the prediction needs (`gsm.theory.prediction.linear_prediction`), all in the eigenbasis
of Σ (eigenvalues λ, float64), per level l with y = α_l x + s_l z, L levels each drawn with probability 1/L:

* `target(λ)`: the population minimiser a*_l(λ);
* `score_series` / `score_function`: the score the data give, as a function of the data second moment
  Σ̂ (the plug-in minimiser, or after a finite SGD budget its exact mean), as a series in Σ̂'s eigenvalue
  (for the chains' jets) or as a matrix function (for Opitz' formula);
* `fluctuations`: the covariance of the SGD error Δ = A − E[A], stationary or after a finite budget.

A new objective (e.g. flow matching) is one new class with these members; no sampler changes. It declares
what gsm can do with it: `sgd_trainable` (train.solver=sgd runs `gsm.training.dsm.train_linear_dsm` on its
per-sample loss residual `sgd_residual`, DSM's by default; DSM and CFM), `neural_trainable` (neural nets,
trained on the objective's `neural_loss`, DSM's loss when it has none; DSM and CFM), `closed_forms` (the VP per-eigenvalue and texture paths); without them a
run refuses train.solver=sgd, model=mlp and data=texture before any work, and computes through the
full-matrix path (docs/extending.md §4). The helpers below (`level_fluctuations`, `mean_after_budget`,
`affine_power_series`, `mean_square_stable_levels`) hold the SGD formulas once, for every objective whose
gradient is affine in A with a residual independent of y at the optimum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gsm.scores.linear import dsm_optimum

F64 = torch.float64

SGD_INIT = {"zeros": 0.0, "identity": 1.0}     # A₀ = a₀ I (model.init); "noise": a₀ = 1/s²; "optimum": A₀ = A*
INITS = (*SGD_INIT, "noise", "optimum")


def initial_scores(init: str, stds) -> torch.Tensor:
    """a₀ per level (L,) float64: zeros 0, identity 1, noise 1/s_l² (the score of N(0, s²I))."""
    stds = torch.as_tensor(stds, dtype=F64)
    if init == "noise":
        return 1.0 / stds ** 2
    return torch.full_like(stds, SGD_INIT[init])


@dataclass(frozen=True)
class SGDBudget:
    """A finite SGD budget: `steps` S steps of size τ (`tau`), batch b (`batch_size`), from A₀ = a₀I
    (`init`: zeros a₀ = 0, identity a₀ = 1, noise a₀ = 1/s², optimum A₀ = A*), each sample at a uniform level among the L
    the sampler reads."""

    steps: int
    tau: float
    batch_size: int = 1
    init: str = "zeros"

    def __post_init__(self):
        if self.init not in INITS:
            raise ValueError(f"init must be one of {' | '.join(INITS)}, got {self.init}")


def _levels(alphas, stds):
    a2 = torch.as_tensor(alphas, dtype=F64).pow(2)
    s2 = torch.as_tensor(stds, dtype=F64).pow(2)
    return a2, s2


def geometric_pair_sum(x: torch.Tensor, y: torch.Tensor, S: int) -> torch.Tensor:
    """Σ_{l<S} x^l y^{S−1−l} = (y^S − x^S)/(y − x), = S x^{S−1} where x = y (elementwise, broadcast)."""
    diff = y - x
    close = diff.abs() < 1e-12
    return torch.where(close, S * x ** max(S - 1, 0), (y ** S - x ** S) / torch.where(close, torch.ones_like(diff), diff))


def affine_power_series(r0: torch.Tensor, r1: torch.Tensor, S: int, order: int) -> torch.Tensor:
    """The Taylor series of r(μ + x)^S for r affine in μ, r(μ + x) = r0 + r1 x (elementwise):
    Σ_k C(S, k) r0^{S−k} r1^k x^k, truncated to `order` coefficients: (...) → (..., order)."""
    return torch.stack([float(math.comb(S, k)) * r0 ** max(S - k, 0) * r1 ** k if k <= S else torch.zeros_like(r0)
                        for k in range(order)], -1)


def mean_after_budget(A_star: torch.Tensor, A0: torch.Tensor, M: torch.Tensor, rate: torch.Tensor,
                      steps: int) -> torch.Tensor:
    """The exact SGD mean after S steps of a gradient affine in A, rate·(A M − target) per step in
    expectation: E[A_S] = A* + (A₀ − A*)(I − rate·M)^S. A_star, A0, M (..., L, n, n), rate (L, 1, 1)."""
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    return A_star + (A0 - A_star) @ torch.linalg.matrix_power(eye - rate * M, int(steps))


def level_fluctuations(m, U, kappa: float, L: int, tau: float, b: int, steps: int | None, symmetric: bool,
                       mu0=None):
    """(Var(Δ_ri), Cov(Δ_ri, Δ_ir)) (d, d) at one level, first order in τ (docs/theory.md §2.2, §11, §14.2), for
    an SGD whose per-sample gradient at the level is u yᵀ, u = κ Δ y + u*, with y ~ N(0, M), M = diag(m) in the
    eigenbasis, and u* independent of y of covariance κ·diag(U) (U: the loss residual's variance at the
    optimum; DSM κ = s², U = α²λ/m; CFM κ = 1, U = λ/m), each sample at the level with probability 1/L:

        stationary  Var(Δ_ri) = τU_r/(2b),   symmetric: Var(Δ_ij) = τ(U_i m_j + U_j m_i)/(4b(m_i + m_j));
        after S steps (ρ_i = 1 − τκm_i/L, μ0 = a₀ − a* the initial mean offset):
        Var(Δ_ri) = τU_r/(2b)(1 − ρ_i^{2S})
                  + (τ²κ²/b) μ0_r² [m_r m_i(1+2δ_ri)/L − m_r²δ_ri/L²] Σ_{l<S} ρ_r^{2l} ρ_i^{2(S−1−l)},
        Cov(Δ_ri, Δ_ir) = (τ²κ²/(bL)) μ0_r μ0_i m_r m_i · S (ρ_rρ_i)^{S−1}   (Var on the diagonal);
        symmetric after S steps: the stationary value times 1 − ρ_ij^{2S}, ρ_ij = 1 − τκ(m_i + m_j)/(2L).

    steps None: stationary; mu0 None: no mean offset (A₀ = A*). m, U, mu0: (d,) float64."""
    d, eye = m.numel(), torch.eye(m.numel(), dtype=F64)
    v = tau * U / (2 * b)
    if symmetric:
        S = tau * (U[:, None] * m[None, :] + U[None, :] * m[:, None]) / (4 * b * (m[:, None] + m[None, :]))
        S.diagonal().copy_(v)
        if steps is not None:
            rho = 1 - tau * kappa * (m[:, None] + m[None, :]) / (2 * L)
            S = S * (1 - rho ** (2 * int(steps)))
        return S, S.clone()
    if steps is None:
        return v[:, None].expand(d, d).clone(), torch.zeros(d, d, dtype=F64)
    Ssteps = int(steps)
    rho = 1 - tau * kappa * m / L
    r2 = rho ** 2
    var = v[:, None] * (1 - r2[None, :] ** Ssteps)
    if mu0 is not None:
        k2 = tau ** 2 * kappa ** 2 / b
        mult = k2 * (mu0 ** 2 * m)[:, None] * (m[None, :] * (1 + 2 * eye) / L - m[:, None] * eye / L ** 2)
        var = var + mult * geometric_pair_sum(r2[:, None], r2[None, :], Ssteps)
        cross = k2 / L * (mu0 * m)[:, None] * (mu0 * m)[None, :] * Ssteps \
            * (rho[:, None] * rho[None, :]) ** max(Ssteps - 1, 0)
    else:
        cross = torch.zeros(d, d, dtype=F64)
    cross.diagonal().copy_(var.diagonal())
    return var, cross


def mean_square_stable_levels(m: torch.Tensor, kappa: torch.Tensor, tau: float, b: int) -> bool:
    """Constant-step SGD mean-square stable at every level (note §2.3; m (L, d) the levels' second moments,
    κ (L,) the drift coefficient, s² for DSM, 1 for CFM): τκ(1+1/b)m_max < 2 and
    Σ_j τκm_j/[b(2 − τκ(1+1/b)m_j)] < 1 at each level."""
    k = kappa.view(-1, 1)
    denom = 2 - tau * k * (1 + 1 / b) * m
    R = (tau * k * m / (b * denom)).sum(-1)
    return bool((denom > 0).all()) and bool((R < 1).all())


class DSM:
    """Denoising score matching for a linear score s_l(y) = −A_l y: the loss ½‖s_l s_l(y) + z‖² at
    y = α_l x + s_l z (convention (L) with σ = s_l on data α_l x ~ N(0, α_l²Σ)), trained by SGD with
    step τ and batch b (`gsm.training.dsm.train_linear_dsm`), or solved exactly on the data
    (`train.solver=exact`). m_l = α_l²λ + s_l² is the level's second moment along λ."""

    name = "dsm"
    sgd_trainable = True    # train.solver=sgd runs its SGD (`train_linear_dsm` with `sgd_residual`)
    neural_trainable = True     # neural nets are trained on its loss (`train_score_net`)
    closed_forms = True     # gsm's per-eigenvalue (VP spectral, sde/ode) and Fourier (textures) paths are written for it

    @staticmethod
    def sgd_residual(alphas, stds):
        """The per-sample loss residual e = c A y + p x + q z = s A y − z (loss ½‖e‖²): (c, p, q) = (s_l, 0, −1),
        (L,) each (`gsm.training.dsm.train_linear_dsm`)."""
        s = torch.as_tensor(stds)
        return s, torch.zeros_like(s), -torch.ones_like(s)

    @staticmethod
    def sgd_drift(alphas, stds) -> torch.Tensor:
        """κ_l = c_l² = s_l²: the mean gradient at level l is κ_l(A M_l − I) (note §1)."""
        return torch.as_tensor(stds, dtype=F64) ** 2

    def target(self, lam, alphas, stds) -> torch.Tensor:
        """a*_l(λ) = 1/(α_l²λ + s_l²): (d,), (L,), (L,) → (L, d)."""
        a2, s2 = _levels(alphas, stds)
        return 1.0 / (a2.view(-1, 1) * torch.as_tensor(lam, dtype=F64).view(1, -1) + s2.view(-1, 1))

    def score_function(self, X: torch.Tensor, alphas, stds, budget: SGDBudget | None = None) -> torch.Tensor:
        """The scores as matrix functions of the data second moment X (..., n, n) → (..., L, n, n): the DSM
        minimiser M_l⁻¹, M_l = α_l²X + s_l²I, or after a finite budget the exact SGD mean (note §2.1)

            E[A_l] = M_l⁻¹ + (A₀ − M_l⁻¹)(I − τs_l²M_l/L)^S

        (the gradient is affine in A and a sample hits level l with probability 1/L). At s_l = 0 the DSM
        gradient vanishes: SGD leaves A₀."""
        A = dsm_optimum(X, torch.as_tensor(alphas, dtype=F64), torch.as_tensor(stds, dtype=F64))
        if budget is None or budget.init == "optimum":
            return A
        a2, s2 = (t.to(X.device) for t in _levels(alphas, stds))
        L, eye = a2.numel(), torch.eye(X.shape[-1], dtype=F64, device=X.device)
        M = a2.view(-1, 1, 1) * X.to(F64).unsqueeze(-3) + s2.view(-1, 1, 1) * eye
        A0 = initial_scores(budget.init, stds).to(X.device).view(-1, 1, 1) * eye
        mean = mean_after_budget(A, A0, M, budget.tau * s2.view(-1, 1, 1) / L, budget.steps)
        return torch.where((s2 == 0).view(-1, 1, 1), A0, mean)

    def score_series(self, mu: torch.Tensor, alphas, stds, budget: SGDBudget | None = None,
                     order: int = 4) -> torch.Tensor:
        """The same scores as truncated series in Σ̂'s eigenvalue μ, f_l(μ + x) = Σ_r f[l, :, r] xʳ:
        the minimiser 1/m, m = α²μ + s², has f^{(r)}/r! = (−α²)ʳ m^{−r−1}; the budget's mean
        1/m + (a₀ − 1/m) r(μ)^S with r = 1 − τs²m/L affine in μ, so r(μ + x)^S = Σ_k C(S, k) r^{S−k}(−τs²α²/L)^k x^k.
        mu (d,) → (L, d, order); equal to `score_function` on a Jordan block (tests)."""
        from gsm.algebra import series_mm
        a2, s2 = _levels(alphas, stds)
        mu = torch.as_tensor(mu, dtype=F64)
        m = a2.view(-1, 1) * mu.view(1, -1) + s2.view(-1, 1)
        r = torch.arange(order, dtype=F64)
        inv = (-a2.view(-1, 1, 1)) ** r * (1.0 / m).unsqueeze(-1) ** (r + 1)
        if budget is None or budget.init == "optimum":
            return inv
        c = budget.tau * s2.view(-1, 1) / a2.numel()
        rS = affine_power_series(1 - c * m, -c * a2.view(-1, 1), int(budget.steps), order)
        a0 = torch.zeros_like(inv)
        a0[..., 0] = initial_scores(budget.init, stds).view(-1, 1)
        return torch.where((s2 == 0).view(-1, 1, 1), a0, inv + series_mm(a0 - inv, rS))

    def mean(self, lam, alphas, stds, budget: SGDBudget | None = None) -> torch.Tensor:
        """E[a_l(λ)] (L, d): the target, or its exact mean after the budget (population data)."""
        return self.score_series(lam, alphas, stds, budget, order=1)[..., 0]

    def fluctuations(self, lam, alphas, stds, tau: float, batch_size: int = 1, budget: SGDBudget | None = None,
                     symmetric: bool = False):
        """(Var(Δ_l,ri), Cov(Δ_l,ri, Δ_l,ir)), (L, d, d) each, of the SGD error Δ = A − E[A] (τ included),
        first order in τ, levels independent. Stationary (note §2.2, §5.3), entries uncorrelated:

            Var(Δ_ri) = τ α²λ_r/(2b m_r);  symmetric: Var(Δ_ij) = τ(U_i m_j + U_j m_i)/(4bs²(m_i+m_j)), U = s²α²λ/m.

        After a finite budget of S steps (ρ_i = 1 − τs²m_i/L, μ0 = a₀ − 1/m the initial mean offset):

            Var(Δ_ri) = τ α²λ_r/(2bm_r)(1 − ρ_i^{2S})
                      + (τ²s⁴/b) μ0_r² [m_r m_i(1+2δ_ri)/L − m_r²δ_ri/L²] Σ_{l<S} ρ_r^{2l} ρ_i^{2(S−1−l)},
            Cov(Δ_ri, Δ_ir) = (τ²s⁴/(bL)) μ0_r μ0_i m_r m_i · S (ρ_rρ_i)^{S−1}   (Var on the diagonal),

        the second lines the multiplicative noise of the mean offset (Isserlis; a step's level-l update is
        −(τ/b) Σ_batch 1[l] s² μ y yᵀ). Symmetric after a budget: the stationary S_ij times
        1 − ρ_ij^{2S}, ρ_ij = 1 − τs²(m_i + m_j)/(2L) (additive noise only). At s_l = 0 SGD does not move A_l."""
        lam = torch.as_tensor(lam, dtype=F64)
        a2, s2 = _levels(alphas, stds)
        d, L = lam.numel(), a2.numel()
        var, cross = torch.zeros(2, L, d, d, dtype=F64)
        for l in range(L):
            if float(s2[l]) > 0:
                a0 = float(initial_scores(budget.init, stds)[l]) if budget is not None and budget.init != "optimum" \
                    else None
                var[l], cross[l] = self._level_fluctuations(lam, float(a2[l]), float(s2[l]), L, tau,
                                                            batch_size, budget, symmetric, a0)
        return var, cross

    @staticmethod
    def _level_fluctuations(lam, a2, s2, L, tau, b, budget, symmetric, a0):
        m = a2 * lam + s2
        return level_fluctuations(m, a2 * lam / m, s2, L, tau, b, None if budget is None else budget.steps,
                                  symmetric, None if a0 is None else a0 - 1 / m)

    def exact_fluctuations(self, lam, sigma: float, tau: float, batch_size: int = 1) -> torch.Tensor:
        """Exact stationary Var(Δ_ri) (d, d) for online Gaussian data at one level (1, σ), any b (note §2.3):

            Var(Δ_ri) = τU_r / [bσ²(2 − τσ²(1+1/b)m_i)(1 − σ⁴R_b)],  U_r = σ²λ_r/m_r,
            σ⁴R_b = Σ_j τσ²m_j / [b(2 − τσ²(1+1/b)m_j)].

        Raises ValueError outside the mean-square stability region (`mean_square_stable`)."""
        lam, b = torch.as_tensor(lam, dtype=F64), batch_size
        one, s = torch.ones(1, dtype=F64), torch.full((1,), float(sigma), dtype=F64)
        if not self.mean_square_stable(lam, one, s, tau, b):
            raise ValueError(f"tau must keep SGD mean-square stable (τσ²(1+1/b)m_max < 2 and σ⁴R_b < 1), got {tau}")
        m = lam + sigma ** 2
        denom = 2 - tau * sigma ** 2 * (1 + 1 / b) * m
        R = (tau * sigma ** 2 * m / (b * denom)).sum()
        U = sigma ** 2 * lam / m
        return tau * U[:, None] / (b * sigma ** 2 * denom[None, :] * (1 - R))

    def circulant_variance(self, lam, alphas, stds, kappa, batch_size: int = 1, exact_tau: float | None = None):
        """Stationary Var(Δ_l(ω))/τ of a circulant (Fourier-diagonal) score per frequency, first order in τ:
        κ α²λ/(4b m) — half the full-matrix diagonal v at a complex frequency (κ = 1), equal at a real one
        (κ = 2). exact_tau (L = 1): the exact variance for online Gaussian data, κU/(2bs²(2 − τs²m(1 + κ/b))),
        U = s²α²λ/m. lam (..., F), kappa like lam, alphas/stds (L,) → (L, ..., F)."""
        a2, s2 = _levels(alphas, stds)
        shape = (-1,) + (1,) * torch.as_tensor(lam).ndim
        a2, s2 = a2.view(shape), s2.view(shape)
        m = a2 * lam + s2
        if exact_tau is None:
            return kappa * a2 * lam / (4 * batch_size * m)
        if a2.numel() != 1:
            raise ValueError(f"exact_tau needs a single noise level, got {a2.numel()} levels")
        U = s2 * a2 * lam / m
        return kappa * U / (2 * batch_size * s2 * (2 - exact_tau * s2 * m * (1 + kappa / batch_size)))

    def eps_tau(self, lam, alphas, stds, tau: float, batch_size: int = 1) -> float:
        """ε_τ = τ max_l α_l²λ(α_l²λ + s_l²)/(2b): the size of the neglected O(τ²) part (theory note §5.5)."""
        a2, s2 = _levels(alphas, stds)
        x = a2.view(-1, 1) * torch.as_tensor(lam, dtype=F64).view(1, -1)
        return tau * float((x * (x + s2.view(-1, 1))).max()) / (2 * batch_size)

    def mean_square_stable(self, lam, alphas, stds, tau: float, batch_size: int = 1) -> bool:
        """Constant-step SGD mean-square stable at every level (note §2.3): τs²(1+1/b)m_max < 2 and
        σ⁴R_b = Σ_j τs²m_j/[b(2 − τs²(1+1/b)m_j)] < 1 (s the level's noise, m = α²λ + s²)."""
        a2, s2 = _levels(alphas, stds)
        m = a2.view(-1, 1) * torch.as_tensor(lam, dtype=F64).view(1, -1) + s2.view(-1, 1)
        return mean_square_stable_levels(m, s2, tau, batch_size)



def sgd_mean_square_stable(eigenvalues, *, sigma: float, tau: float, batch_size: int = 1) -> bool:
    """`DSM.mean_square_stable` at the one level y = x + σz (note §2.3)."""
    return DSM().mean_square_stable(eigenvalues, torch.ones(1, dtype=F64), torch.full((1,), float(sigma), dtype=F64),
                                    tau, batch_size)


OBJECTIVES = {"dsm": DSM}
