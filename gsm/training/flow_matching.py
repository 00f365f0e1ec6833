"""Conditional flow matching (CFM) for a linear velocity field (docs/theory.md, "Flow matching").

Source x₀ ~ N(0, I), data x₁ ~ N(0, Σ), the linear (CondOT / rectified-flow) path x_t = (1 − t)x₀ + t x₁,
t ∈ [0, 1], and the loss E‖v(x_t, t) − (x₁ − x₀)‖². A linear velocity v_l(x) = −B_l x is learned at each
time t_l the flow sampler evaluates (`gsm.samplers.flow`). In gsm's level convention y = α_l x + s_l z
the path is the level α_l = t_l, s_l = 1 − t_l (x = x₁ the data, z = x₀ the source), so the objective
plugs into the objective interface (`gsm.training.objectives`, docs/extending.md §4) with the velocity
matrix B_l in the place of the score matrix A_l. Its minimiser on a data second moment X,

    B_l(X) = ((1 − t)I − tX)(t²X + (1 − t)²I)⁻¹,

is the exact velocity for X = Σ (model=oracle) and the empirical least-squares minimiser for X = Σ̂
(train.solver=exact), both functions of X alone; the 1/N term of the prediction expands it through the
sampler's law map (its Taylor series in Σ̂'s eigenvalue, `score_series`).

Any affine path x_t = a_t x₁ + b_t x₀ (sampler=flow sampler.path=vp, docs/theory.md §14.3) is the level
(α, s) = (a_t, b_t): the objective learns B of w = −B y ≈ E[x₁ − x₀ | y] there (the formulas below hold for
any α, s; only the residual variance λ(α + s)²/m sees α + s ≠ 1), and the sampler turns w into the path's
velocity v = p y + q w. The path's own loss ½‖v − (ȧx₁ + ḃx₀)‖² is q²·½‖w − (x₁ − x₀)‖² with the same
minimiser, and its SGD at step τ takes the same steps (B_v = qB − pI: gradient ×q, parameter ×q).

CFM-SGD (train.solver=sgd, docs/theory.md §14.2): the per-sample loss ½‖v(y) − (x − z)‖² = ½‖B y + x − z‖²
has gradient (B y + x − z) yᵀ, DSM's rank-one form with the residual (c, p, q) = (1, 1, −1)
(`sgd_residual`, trained by `gsm.training.dsm.train_linear_dsm`). The gradient is affine in B with
expectation (B M_l − (s_l I − α_l X))/L per step, so the mean after S steps is exact; the residual at the
optimum, e* = u − E[u | y], is independent of y (jointly Gaussian, uncorrelated) with variance λ(α + s)²/m
per eigen-direction (λ/m on the linear path; not DSM's α²λ/m: the target u = x − z carries the data), which
sets the τ term.

Velocity nets (model=mlp, user models, `neural_trainable`): `cfm_loss`, the same per-sample loss
½‖v_θ(y, l) − (x − z)‖² at a uniform level, minimised by `gsm.training.dsm.train_score_net`.
"""
from __future__ import annotations

import torch

from gsm.algebra import series_mm
from gsm.scores.linear import matrix_inverse
from gsm.training.objectives import (SGD_INIT, SGDBudget, affine_power_series, level_fluctuations,
                                     mean_after_budget, mean_square_stable_levels)

F64 = torch.float64


def cfm_loss(velocity, x: torch.Tensor, alphas: torch.Tensor, stds: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Monte-Carlo CFM loss ½E‖v(y, l) − (x − z)‖² at y = α_l x + s_l z (the linear path: α = t, s = 1 − t,
    x = x₁ the data, z = x₀ the source), one uniform level l per sample among the L times the sampler
    evaluates (as the linear CFM-SGD and the neural DSM path), drawn first, then z ~ N(0, I).
    velocity(y, l): y (R, b, d), l an int, or per-sample levels (b,) when `velocity.level_tensors`.
    x (R, b, d) → (R,), the loss per replicate averaged over the batch."""
    b = x.shape[1]
    lv = torch.randint(alphas.numel(), (b,), generator=generator, device=x.device)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    y = alphas[lv].view(1, b, 1) * x + stds[lv].view(1, b, 1) * z
    if getattr(velocity, "level_tensors", False):
        return 0.5 * ((velocity(y, lv) - (x - z)) ** 2).sum(-1).mean(-1)
    loss = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    for l in lv.unique().tolist():      # one call per level present in the batch
        m = lv == l
        loss = loss + 0.5 * ((velocity(y[:, m], l) - (x[:, m] - z[:, m])) ** 2).sum((-1, -2))
    return loss / b


class CFM:
    """Conditional flow matching: the matrix B_l of w = −B_l x ≈ E[x₁ − x₀ | x_t = x] per level
    (α_l, s_l) = (a_l, b_l) of the path ((t_l, 1 − t_l) on the linear path, where w is the velocity; module
    doc). Per eigenvalue λ of X, with m = α²λ + s², b(λ) = (s − αλ)/m."""

    name = "cfm"
    predicts = "velocity"   # the flow sampler reads a velocity; score samplers refuse it (gsm.pipeline.validate)
    sgd_trainable = True    # CFM-SGD: `train_linear_dsm` with `sgd_residual` (linear models)
    neural_trainable = True     # velocity nets (model=mlp, user models): `train_score_net` with `neural_loss`
    closed_forms = False    # gsm's per-eigenvalue (VP) and Fourier (texture) paths are written for DSM

    @staticmethod
    def neural_loss(model, x, alphas, stds, generator=None) -> torch.Tensor:
        """The CFM loss of a velocity net on a batch, `cfm_loss` (`gsm.training.dsm.train_score_net`'s `loss`)."""
        return cfm_loss(model, x, alphas, stds, generator)

    @staticmethod
    def _levels(alphas, stds):
        alphas, stds = torch.as_tensor(alphas, dtype=F64), torch.as_tensor(stds, dtype=F64)
        return alphas, stds

    @staticmethod
    def sgd_residual(alphas, stds):
        """The per-sample loss residual e = c B y + p x + q z = B y + x − z: (c, p, q) = (1, 1, −1), (L,) each."""
        one = torch.ones_like(torch.as_tensor(stds, dtype=F64))
        return one, one.clone(), -one

    @staticmethod
    def sgd_drift(alphas, stds) -> torch.Tensor:
        """κ_l = c_l² = 1: the mean gradient at level l is κ_l(B M_l − (s_l I − α_l X)), M_l = α_l²X + s_l²I."""
        return torch.ones_like(torch.as_tensor(stds, dtype=F64))

    @staticmethod
    def initial_velocity(budget: SGDBudget) -> float | None:
        """b₀ of B₀ = b₀I (model.init: zeros 0, identity 1); None for init=optimum (B₀ = B*)."""
        if budget.init == "optimum":
            return None
        if budget.init not in SGD_INIT:
            raise ValueError(f"init must be one of zeros | identity | optimum for objective cfm, got {budget.init}")
        return SGD_INIT[budget.init]

    def target(self, lam, alphas, stds) -> torch.Tensor:
        """b*_l(λ) = (s_l − α_lλ)/(α_l²λ + s_l²): (d,), (L,), (L,) → (L, d)."""
        a, s = (t.view(-1, 1) for t in self._levels(alphas, stds))
        lam = torch.as_tensor(lam, dtype=F64).view(1, -1)
        return (s - a * lam) / (a * a * lam + s * s)

    def score_function(self, X: torch.Tensor, alphas, stds, budget=None) -> torch.Tensor:
        """B_l = (s_l I − α_l X)(α_l²X + s_l²I)⁻¹ (the two factors commute): X (..., n, n) → (..., L, n, n).
        At s_l = 0 (t = 1) B = −I/α_l whatever X (no X⁻¹: Σ̂ may be singular). After a finite SGD budget the
        exact mean (§14.2): E[B_l] = B_l + (B₀ − B_l)(I − τM_l/L)^S, M_l = α_l²X + s_l²I."""
        a, s = (t.to(X.device).view(-1, 1, 1) for t in self._levels(alphas, stds))
        X = X.to(F64).unsqueeze(-3)
        eye = torch.eye(X.shape[-1], dtype=F64, device=X.device)
        at_data = (s == 0).expand(a.shape)
        M = a * a * X + torch.where(at_data, torch.ones_like(s), s * s) * eye      # s = 0: any invertible M
        at_end = -eye / torch.where(at_data, a, torch.ones_like(a))          # −I/α: α = 1 on the linear path
        B = torch.where(at_data, at_end, matrix_inverse(M) @ (s * eye - a * X))
        b0 = None if budget is None else self.initial_velocity(budget)
        if b0 is None:
            return B
        return mean_after_budget(B, b0 * eye, a * a * X + s * s * eye, torch.full_like(s, budget.tau / a.numel()),
                                 budget.steps)

    def score_series(self, mu: torch.Tensor, alphas, stds, budget=None, order: int = 4) -> torch.Tensor:
        """b_l(μ + x) = Σ_r f[l, :, r] xʳ: with m = α²μ + s², c = s − αμ,
        b = (c − αx)/(m + α²x) = (c − αx) Σ_r (−α²)ʳ xʳ/m^{r+1}, so
        f_r = c(−α²)ʳ/m^{r+1} − α(−α²)^{r−1}/m^r (r ≥ 1). After a budget, b + (b₀ − b)ρ(μ)^S with
        ρ = 1 − τm/L affine in μ (`affine_power_series`). mu (d,) → (L, d, order)."""
        a, s = (t.view(-1, 1, 1) for t in self._levels(alphas, stds))
        mu = torch.as_tensor(mu, dtype=F64).view(1, -1, 1)
        m, c = a * a * mu + s * s, s - a * mu
        r = torch.arange(order, dtype=F64)
        first = c * (-a * a) ** r / m ** (r + 1)
        second = -a * (-a * a) ** (r - 1).clamp_min(0) / m ** r
        f = first + torch.where(r >= 1, second, torch.zeros_like(second))
        b0 = None if budget is None else self.initial_velocity(budget)
        if b0 is None:
            return f
        rate = budget.tau / a.numel()
        rS = affine_power_series(1 - rate * m[..., 0], (-rate * a * a)[..., 0].expand_as(m[..., 0]),
                                 int(budget.steps), order)
        f0 = torch.zeros_like(f)
        f0[..., 0] = b0
        return f + series_mm(f0 - f, rS)

    def mean(self, lam, alphas, stds, budget=None) -> torch.Tensor:
        """E[b_l(λ)] (L, d): the target, or its exact mean after the budget (population data)."""
        return self.score_series(lam, alphas, stds, budget, order=1)[..., 0]

    def fluctuations(self, lam, alphas, stds, tau: float, batch_size: int = 1, budget: SGDBudget | None = None,
                     symmetric: bool = False):
        """(Var(Δ_l,ri), Cov(Δ_l,ri, Δ_l,ir)) (L, d, d) of the CFM-SGD error Δ = B − E[B], first order in τ,
        levels independent (§14.2): `gsm.training.objectives.level_fluctuations` with drift κ = 1 and the
        residual variance U_r = λ_r(α + s)²/m_r (λ_r/m_r on the linear path, §14.3), so stationary
        Var(Δ_ri) = τU_r/(2b); after S steps
        ρ_i = 1 − τm_i/L and the mean offset μ0 = b₀ − b*."""
        lam = torch.as_tensor(lam, dtype=F64)
        alphas, stds = self._levels(alphas, stds)
        b0 = None if budget is None else self.initial_velocity(budget)
        target = self.target(lam, alphas, stds)
        var, cross = torch.zeros(2, alphas.numel(), lam.numel(), lam.numel(), dtype=F64)
        for l in range(alphas.numel()):
            m = alphas[l] ** 2 * lam + stds[l] ** 2
            U = lam * (alphas[l] + stds[l]) ** 2 / m         # Var(x − z | y), §14.3
            var[l], cross[l] = level_fluctuations(m, U, 1.0, alphas.numel(), tau, batch_size,
                                                  None if budget is None else budget.steps, symmetric,
                                                  None if b0 is None else b0 - target[l])
        return var, cross

    def eps_tau(self, lam, alphas, stds, tau: float, batch_size: int = 1) -> float:
        """ε_τ = τ max_l λ(α_l + s_l)² m_l/(2b) = max Var(Δ_rr)·m_r², DSM's normalisation (note §5.5) for the
        velocity ((α + s)² = 1 on the linear path)."""
        a, s = (t.view(-1, 1) for t in self._levels(alphas, stds))
        lam = torch.as_tensor(lam, dtype=F64).view(1, -1)
        return tau * float((lam * (a + s) ** 2 * (a ** 2 * lam + s ** 2)).max()) / (2 * batch_size)

    def mean_square_stable(self, lam, alphas, stds, tau: float, batch_size: int = 1) -> bool:
        """CFM-SGD mean-square stable at every level (note §2.3 with drift κ = 1): τ(1+1/b)m_max < 2 and
        Σ_j τm_j/[b(2 − τ(1+1/b)m_j)] < 1, m = α²λ + s²."""
        a, s = self._levels(alphas, stds)
        m = a.view(-1, 1) ** 2 * torch.as_tensor(lam, dtype=F64).view(1, -1) + s.view(-1, 1) ** 2
        return mean_square_stable_levels(m, self.sgd_drift(a, s), tau, batch_size)

