"""`sampler=flow`: ODE samplers of a flow-matching velocity (docs/flow.md, docs/theory.md "Flow matching").

From x₀ ~ N(0, I) at t = 0 to the data at t = 1, on the uniform grid t_k = k/K, k = 0..K, h = 1/K, for a
linear velocity v_l(x) = −B_l x learned at the times t_l the scheme evaluates (objective=cfm): the ODE
x′ = G(t)x, G = −B, integrated by an explicit Runge–Kutta step (`gsm.theory.chain.explicit_rk_step`),

    euler     M = I + hG(t_k)                                                         1 evaluation
    midpoint  M = I + hG(t_k + h/2)(I + (h/2)G(t_k))                                  2 evaluations
    heun      M = I + (h/2)(G(t_k) + G(t_{k+1})(I + hG(t_k)))                         2 evaluations
    rk4       classical RK4, stages at t_k, t_k + h/2 (twice), t_{k+1}                4 evaluations

so each sampler is a linear chain x ← M_k x (no noise) and its law and prediction derive from it
(`gsm.samplers.base.Sampler`). `nfe` = evaluations per step × K. `ode` is the exact flow of the exact
velocity: per eigenvalue x_t = √((1 − t)² + t²λ) x₀, so the output is N(0, Σ) exactly (x₁ = Σ^{½}x₀);
it needs model=oracle (a learned velocity has no closed-form flow here).

A neural velocity v_θ(x, l) (model=mlp, user models; docs/flow.md "Neural velocity nets") runs the same
schemes: `rk_step` applies the same Butcher tableau to v_θ, through the same `explicit_rk_step` with the
stage "matrices" the velocity functions and the algebra `point_algebra(x)`, in which the unit is x and a
product G·y is G(y). For v(x) = −B_l x that is exactly x ↦ M_k x (tested, 1e-12).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gsm.algebra import Algebra
from gsm.checks import choice, number
from gsm.samplers.base import Sampler
from gsm.theory.chain import LinearChain, explicit_rk_step

F64 = torch.float64

# Butcher tableaux (a, b, c) of the explicit schemes
TABLEAUS = {
    "euler": ([[0.0]], [1.0], [0.0]),
    "midpoint": ([[0.0, 0.0], [0.5, 0.0]], [0.0, 1.0], [0.0, 0.5]),
    "heun": ([[0.0, 0.0], [1.0, 0.0]], [0.5, 0.5], [0.0, 1.0]),
    "rk4": ([[0.0] * 4, [0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1.0, 0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6],
            [0.0, 0.5, 0.5, 1.0]),
}
SCHEMES = (*TABLEAUS, "ode")


def _rk_fn(levels, h, tableau):
    a, b, _ = tableau
    return lambda A, alg: explicit_rk_step([-A(l) for l in levels], h, a, b, alg)


def flow_chain(scheme: str, steps: int):
    """The scheme's chain on t_k = k/K and its level times: (LinearChain, times (L,) float64), levels
    numbered in order of first use."""
    h, index, times = 1.0 / steps, {}, []
    fns, reads = [], []
    tableau = TABLEAUS[scheme]
    for k in range(steps):
        ls = []
        for c in tableau[2]:
            t = (2 * k + round(2 * c)) / (2 * steps)        # c ∈ {0, ½, 1}: exact binary fractions of the grid
            if t not in index:
                index[t] = len(times)
                times.append(t)
            ls.append(index[t])
        fns.append(_rk_fn(ls, h, tableau))
        reads.append(tuple(ls))
    chain = LinearChain(fns, torch.zeros(steps, dtype=F64), reads, len(times))
    return chain, torch.tensor(times, dtype=F64)


def point_algebra(x: torch.Tensor) -> Algebra:
    """The algebra in which `explicit_rk_step` runs a Runge–Kutta step on points: elements are points
    (R, M, d), the unit is x itself and mm(G, y) = G(y), G a velocity function; then
    K_i = G_i(x + h Σ_j a_ij K_j) are the stages and M = x + h Σ_i b_i K_i the next point."""
    return Algebra("point", lambda G, y: G(y), lambda like: x)


def rk_step(velocities, x: torch.Tensor, h: float, tableau) -> torch.Tensor:
    """One explicit Runge–Kutta step x ↦ x + h Σ_i b_i K_i of the ODE x′ = v(x, t) on points x (R, M, d),
    `velocities` the stage functions y ↦ v(y, t_k + c_i h) ((R, M, d) → (R, M, d)), (a, b, c) = `tableau`
    (`TABLEAUS`): `explicit_rk_step` in `point_algebra(x)`, the one implementation of the tableaux."""
    a, b, _ = tableau
    return explicit_rk_step(list(velocities), h, a, b, point_algebra(x))


@dataclass
class ExactFlowLaw:
    """The law map of the exact flow (scheme=ode): the output variance is λ for the exact velocity."""

    lam: torch.Tensor

    def variance(self, a: torch.Tensor) -> torch.Tensor:
        return self.lam.clone()

    def divided_differences(self, *args, **kwargs):
        raise ValueError("sampler.scheme=ode is the exact flow of the exact velocity: it needs model=oracle")

    tau_cells = divided_differences


@dataclass
class Flow(Sampler):
    """`sampler=flow` (module doc): scheme euler | midpoint | heun | rk4 | ode, steps K (or nfe, the velocity
    evaluations: K = nfe // evaluations per step), particles M."""

    scheme: str = "euler"
    steps: int | None = 10
    particles: int = 2000
    nfe: int | None = None

    reads = "velocity"              # reads a velocity field (objective=cfm), not a score
    init_var = 1.0                  # the source N(0, I)
    requires_linear_score = False   # a neural velocity runs the same tableaux (`rk_step`); scheme=ode refuses it

    def __post_init__(self):
        choice("sampler.scheme", self.scheme, SCHEMES)
        number("sampler.particles", self.particles, 2, integer=True)
        self.K = self._steps()
        if self.scheme == "ode":
            self.chain, self.times, self.evaluations = None, torch.tensor([0.0, 1.0], dtype=F64), 0
        else:
            self.chain, self.times = flow_chain(self.scheme, self.K)
            self.evaluations = len(TABLEAUS[self.scheme][1]) * self.K
        self.root = None
        self.oracle_only = ("sampler.scheme must be euler | midpoint | heun | rk4 with a learned velocity "
                            "(ode is the exact flow of the exact velocity: model=oracle), got ode") \
            if self.scheme == "ode" else None

    def _steps(self) -> int:
        """K from sampler.steps, or from the velocity-evaluation budget sampler.nfe: K = nfe // evaluations per
        step (as sampler=vp; set exactly one)."""
        if self.nfe is None:
            return int(number("sampler.steps", self.steps, 1, integer=True))
        per = len(TABLEAUS[self.scheme][1]) if self.scheme in TABLEAUS else 1
        if self.steps is not None:
            raise ValueError(f"sampler.steps must be null when sampler.nfe is set (set exactly one), "
                             f"got steps={self.steps}, nfe={self.nfe}")
        return int(number("sampler.nfe", self.nfe, per, integer=True, why=f"scheme={self.scheme}")) // per

    def noise_levels(self, sigma=None):
        """The path x_t = t x₁ + (1 − t)x₀ as levels: α_l = t_l, s_l = 1 − t_l (σ unused)."""
        return self.times.clone(), 1.0 - self.times

    def bind(self, cov: torch.Tensor) -> dict:
        """Keeps Σ^{½} for the exact flow (x₁ = Σ^{½}x₀); reports nfe and steps."""
        if self.chain is None:
            lam, U = torch.linalg.eigh(cov.to(F64))
            self.root = (U * lam.clamp_min(0).sqrt()) @ U.T
        return {"nfe": self.evaluations, "steps": self.K}

    def _require_root(self):
        if self.root is None:
            raise ValueError("sampler.scheme=ode needs the target covariance (Flow.bind(Σ) before sampling)")
        return self.root

    def covariance(self, A: torch.Tensor) -> torch.Tensor:
        """The exact law (R, d, d): the chain's, or Σ for the exact flow."""
        if self.chain is not None:
            return super().covariance(A)
        root = self._require_root().to(A.device)
        return (root @ root).expand(A.shape[0], *root.shape).clone()

    def sample(self, model, replicates: int, dim: int, generator=None, device="cpu", progress=False,
               dtype=torch.float32) -> torch.Tensor:
        """M particles per replicate (R, M, d) from N(0, I) through the chain (or Σ^{½} for ode); a non-linear
        velocity model(y, l) by `rk_step` at the levels each step reads, in `dtype`."""
        if self.chain is not None and model.linear:
            return super().sample(model, replicates, dim, generator, device, progress, dtype)
        if self.chain is not None:
            x = torch.randn(replicates, self.particles, dim, generator=generator, device=device, dtype=dtype)
            return self.sample_nonlinear(model, x)
        x = math.sqrt(self.init_var) * torch.randn(replicates, self.particles, dim, generator=generator,
                                                   device=device, dtype=dtype)
        return x @ self._require_root().to(device=device, dtype=dtype)

    def sample_nonlinear(self, velocity, x: torch.Tensor) -> torch.Tensor:
        """The scheme on points x (R, M, d) at t = 0 for any velocity(y, l) (l the level index): K steps of
        `rk_step` on t_k = k/K, stage i of step k at the level the chain reads there (`chain.levels[k]`)."""
        if self.chain is None:
            raise ValueError(self.oracle_only)
        tableau, h = TABLEAUS[self.scheme], 1.0 / self.K
        for levels in self.chain.levels:
            x = rk_step([lambda y, l=l: velocity(y, l) for l in levels], x, h, tableau)
        return x

    def law(self, lam: torch.Tensor):
        return ExactFlowLaw(lam.to(F64)) if self.chain is None else super().law(lam)
