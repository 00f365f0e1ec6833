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
sampler's law map (its Taylor series in Σ̂'s eigenvalue, `score_series`). No SGD trainer: sgd_trainable
is False, so a run with train.solver=sgd is refused before any work.
"""
from __future__ import annotations

import torch

from gsm.scores.linear import matrix_inverse

F64 = torch.float64


class CFM:
    """Conditional flow matching on the linear path: the velocity matrix B_l (v = −B_l x) per level
    (α_l, s_l) = (t_l, 1 − t_l). Per eigenvalue λ of X, with m = α²λ + s², b(λ) = (s − αλ)/m."""

    name = "cfm"
    predicts = "velocity"   # the flow sampler reads a velocity; score samplers refuse it (gsm.pipeline.validate)
    sgd_trainable = False   # no CFM-SGD trainer: train.solver=exact or model=oracle
    closed_forms = False    # gsm's per-eigenvalue (VP) and Fourier (texture) paths are written for DSM

    @staticmethod
    def _levels(alphas, stds):
        alphas, stds = torch.as_tensor(alphas, dtype=F64), torch.as_tensor(stds, dtype=F64)
        return alphas, stds

    def target(self, lam, alphas, stds) -> torch.Tensor:
        """b*_l(λ) = (s_l − α_lλ)/(α_l²λ + s_l²): (d,), (L,), (L,) → (L, d)."""
        a, s = (t.view(-1, 1) for t in self._levels(alphas, stds))
        lam = torch.as_tensor(lam, dtype=F64).view(1, -1)
        return (s - a * lam) / (a * a * lam + s * s)

    def score_function(self, X: torch.Tensor, alphas, stds, budget=None) -> torch.Tensor:
        """B_l = (s_l I − α_l X)(α_l²X + s_l²I)⁻¹ (the two factors commute): X (..., n, n) → (..., L, n, n).
        At s_l = 0 (t = 1) B = −I whatever X (no X⁻¹: Σ̂ may be singular)."""
        if budget is not None:
            raise ValueError("objective cfm has no SGD budget (train.solver=exact or model=oracle)")
        a, s = (t.to(X.device).view(-1, 1, 1) for t in self._levels(alphas, stds))
        X = X.to(F64).unsqueeze(-3)
        eye = torch.eye(X.shape[-1], dtype=F64, device=X.device)
        at_data = (s == 0).expand(a.shape)
        M = a * a * X + torch.where(at_data, torch.ones_like(s), s * s) * eye      # s = 0: any invertible M
        B = matrix_inverse(M) @ (s * eye - a * X)
        return torch.where(at_data, -eye, B)

    def score_series(self, mu: torch.Tensor, alphas, stds, budget=None, order: int = 4) -> torch.Tensor:
        """b_l(μ + x) = Σ_r f[l, :, r] xʳ: with m = α²μ + s², c = s − αμ,
        b = (c − αx)/(m + α²x) = (c − αx) Σ_r (−α²)ʳ xʳ/m^{r+1}, so
        f_r = c(−α²)ʳ/m^{r+1} − α(−α²)^{r−1}/m^r (r ≥ 1). mu (d,) → (L, d, order)."""
        if budget is not None:
            raise ValueError("objective cfm has no SGD budget (train.solver=exact or model=oracle)")
        a, s = (t.view(-1, 1, 1) for t in self._levels(alphas, stds))
        mu = torch.as_tensor(mu, dtype=F64).view(1, -1, 1)
        m, c = a * a * mu + s * s, s - a * mu
        r = torch.arange(order, dtype=F64)
        first = c * (-a * a) ** r / m ** (r + 1)
        second = -a * (-a * a) ** (r - 1).clamp_min(0) / m ** r
        return first + torch.where(r >= 1, second, torch.zeros_like(second))

    def mean(self, lam, alphas, stds, budget=None) -> torch.Tensor:
        """E[b_l(λ)] (L, d): the target (no SGD budget)."""
        return self.target(lam, alphas, stds)

