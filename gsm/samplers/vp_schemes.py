"""The VP SDE and its discretisations as linear chains (Pierret & Galerne, arXiv 2405.14250; docs/vp.md):
the schedule β(t) (`VPSchedule`), the uniform grid from T to ε (`vp_grid`), each scheme's chain
x ← M_k x + √q_k ξ (`vp_chain`: em, ei, ddpm, euler, heun, rk4), the exact scores and the exact
continuous laws (sde, ode) per eigenvalue (`continuous_variance`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gsm.theory.chain import LinearChain, StackedSteps, affine_step, explicit_rk_step

_F64 = torch.float64


SDE_SCHEMES = ("em", "ei", "ddpm")


ODE_SCHEMES = ("euler", "heun", "rk4")


EXACT_SCHEMES = ("sde", "ode")


SCHEMES = SDE_SCHEMES + ODE_SCHEMES + EXACT_SCHEMES


INITS = ("normal", "prior")


# Butcher tableaux (a, b, c) of the flow-ODE schemes
TABLEAUS = {
    "euler": ([[0.0]], [1.0], [0.0]),
    "heun": ([[0.0, 0.0], [1.0, 0.0]], [0.5, 0.5], [0.0, 1.0]),
    "rk4": ([[0.0] * 4, [0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1.0, 0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6],
            [0.0, 0.5, 0.5, 1.0]),
}


EVALS_PER_STEP = {"em": 1, "ei": 1, "ddpm": 1, "euler": 1, "heun": 2, "rk4": 4, "sde": 0, "ode": 0}


# ------------------------------------------------------------------------------------------ schedule

@dataclass(frozen=True)
class VPSchedule:
    """β(t) = β_min + t(β_max − β_min) on [0, T] (Song's convention; defaults 0.1, 20, T = 1)."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.T) and self.T > 0):
            raise ValueError(f"sampler.T must be finite and > 0, got {self.T}")
        if not (math.isfinite(self.beta_max) and 0 < self.beta_min <= self.beta_max):
            raise ValueError(f"sampler.beta_min and beta_max must satisfy 0 < beta_min <= beta_max (finite), "
                             f"got beta_min={self.beta_min}, beta_max={self.beta_max}")

    def beta(self, t: float) -> float:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def B(self, t):
        """B(t) = β_min t + ½(β_max − β_min)t² (float or float64 tensor)."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def alpha_std(self, t: torch.Tensor):
        """α_t = e^{−B/2}, s_t = √(1 − e^{−B}), float64 (L,) each."""
        B = self.B(torch.as_tensor(t, dtype=_F64))
        return torch.exp(-0.5 * B), torch.sqrt(-torch.expm1(-B))

    def marginal(self, lam: torch.Tensor, t) -> torch.Tensor:
        """σ_t(λ) = e^{−B(t)}λ + 1 − e^{−B(t)}: lam (d,), t (n,) → (n, d) (t scalar → (d,))."""
        B = self.B(torch.as_tensor(t, dtype=_F64))
        e = torch.exp(-B)
        if not B.ndim:
            return e * lam.to(_F64) + (1 - e)
        # outer + in-place add: no broadcast temporaries of the (n, d) table (the same numbers)
        return torch.outer(e, lam.to(_F64)).add_((1 - e).unsqueeze(-1))


def vp_grid(T: float, eps: float, steps: int) -> torch.Tensor:
    """t_k = T − k(T − ε)/K, k = 0..K, float64 (K+1,) (decreasing: application order)."""
    return torch.linspace(float(T), float(eps), int(steps) + 1, dtype=_F64)


# -------------------------------------------------------------------------------------- the chains

class _Levels:
    """Distinct evaluation times, numbered in order of first use."""

    def __init__(self):
        self.times, self.index = [], {}

    def __call__(self, t: float) -> int:
        if t not in self.index:
            self.index[t] = len(self.times)
            self.times.append(t)
        return self.index[t]


def _affine_fn(l, c, g):
    return lambda A, alg: affine_step(c, g, A(l), alg)


def _rk_step_matrix(stage_scores, half_betas, h, tableau, alg):
    """M of one explicit RK step on the flow ODE y′ = G y, G_i = ½β(t_i)(I − A_i) at the stages' scores A_i.
    half_betas ½β(t_i) and h: floats (one step), or (b, 1) tensors (a block of steps, `StackedSteps`)."""
    a, b, _ = tableau
    G = [r * (alg.one(A) - A) for A, r in zip(stage_scores, half_betas)]
    return explicit_rk_step(G, h, a, b, alg)


def _rk_fn(levels, half_betas, h, tableau):
    return lambda A, alg: _rk_step_matrix([A(l) for l in levels], half_betas, h, tableau, alg)


def _stacked_steps(scheme: str, coef: list, h: list, reads: list) -> StackedSteps:
    """Every step of the scheme at once (diagonal algebra), from the per-step coefficients of `vp_chain`:
    (c_k, g_k) of M = cI − gA (SDE schemes) or the stages' ½β (ODE schemes); the same step formulas."""
    col = lambda x: torch.tensor(x, dtype=_F64).reshape(len(x), -1)     # noqa: E731  (K,) or (K, S) → (K, ·)
    if scheme in SDE_SCHEMES:
        c, g = col([cg[0] for cg in coef]), col([cg[1] for cg in coef])
        fn = lambda A, alg, ks: affine_step(c[ks], g[ks], A(0), alg)      # noqa: E731
    else:
        r, ht, tab = col(coef), col(h), TABLEAUS[scheme]
        fn = lambda A, alg, ks: _rk_step_matrix([A(i) for i in range(r.shape[1])],    # noqa: E731
                                               [r[ks, i:i + 1] for i in range(r.shape[1])], ht[ks], tab, alg)
    return StackedSteps(fn, torch.tensor(reads, dtype=torch.int64))


def vp_chain(scheme: str, schedule: VPSchedule, steps: int, eps: float):
    """The scheme's linear chain on the grid `vp_grid(T, ε, K)` and its level times, with its steps also
    stacked (`StackedSteps`: the diagonal law by blocks of steps). Returns (LinearChain, times (L,) float64)."""
    if scheme not in SDE_SCHEMES + ODE_SCHEMES:
        raise ValueError(f"sampler.scheme must be one of {' | '.join(SDE_SCHEMES + ODE_SCHEMES)} for a chain, "
                         f"got {scheme}")
    t = vp_grid(schedule.T, eps, steps).tolist()
    lv = _Levels()
    fns, q, reads, coef, hs = [], [], [], [], []
    for k in range(steps):
        t0, t1 = t[k], t[k + 1]
        h = t0 - t1
        hs.append(h)
        if scheme in SDE_SCHEMES:
            l = lv(t0)
            c, g, qk = _sde_coefficients(scheme, schedule, t0, t1, steps, eps)
            fns.append(_affine_fn(l, c, g))
            coef.append((c, g))
            reads.append((l,))
            q.append(qk)
        else:
            tab = TABLEAUS[scheme]
            times = [t0 if ci == 0 else t1 if ci == 1 else 0.5 * (t0 + t1) for ci in tab[2]]
            ls = [lv(s) for s in times]
            rs = [0.5 * schedule.beta(s) for s in times]
            fns.append(_rk_fn(ls, rs, h, tab))
            coef.append(rs)
            reads.append(tuple(ls))
            q.append(0.0)
    chain = LinearChain(fns, torch.tensor(q, dtype=_F64), reads, len(lv.times),
                        stacked=_stacked_steps(scheme, coef, hs, reads))
    return chain, torch.tensor(lv.times, dtype=_F64)


def _sde_coefficients(scheme, schedule, t0, t1, steps, eps):
    """(c, g, q) of the SDE step t0 → t1, M = cI − gA, noise q (module doc of `gsm.samplers.vp`)."""
    bk = (t0 - t1) * schedule.beta(t0)
    if scheme == "em":
        return 1 + 0.5 * bk, bk, bk
    if scheme == "ei":
        dB = schedule.B(t0) - schedule.B(t1)
        return math.exp(0.5 * dB), 2 * math.expm1(0.5 * dB), math.expm1(dB)
    if not bk < 1:
        raise ValueError(f"sampler.steps must be large enough that b_k = hβ(t_k) < 1 for scheme=ddpm "
                         f"(K > {(schedule.T - eps) * schedule.beta_max:.4g}), got {steps}")
    return 1 / math.sqrt(1 - bk), bk / math.sqrt(1 - bk), bk


def exact_scores(lam: torch.Tensor, schedule: VPSchedule, times: torch.Tensor) -> torch.Tensor:
    """a_l(λ) = 1/σ_{t_l}(λ), the exact score per eigenvalue at each level: (d,), (L,) → (L, d)."""
    return schedule.marginal(lam, times).reciprocal_()


def continuous_variance(scheme: str, lam: torch.Tensor, schedule: VPSchedule, eps: float, init_var) -> torch.Tensor:
    """P–G eqs. 7–8 (module doc): the law at t = ε of the exact backward SDE (`sde`) or flow ODE (`ode`)
    started from variance init_var (a number or (d,)) at T. (d,) float64."""
    sT, se = schedule.marginal(lam, schedule.T), schedule.marginal(lam, eps)
    if scheme == "ode":
        return init_var * se / sT
    decay = math.exp(-(schedule.B(schedule.T) - schedule.B(eps)))
    return se + (init_var - sT) * decay * se ** 2 / sT ** 2
