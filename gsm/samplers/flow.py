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

`path` (docs/theory.md §14.3): `linear` x_t = t x₁ + (1 − t)x₀ (the above), or `vp`, x_t = a_t x₁ + b_t x₀
with sampler=vp's schedule read in flow time, a_t = e^{−B(τ)/2}, b_t = √(1 − a_t²) at the VP time
τ = T − t(T − ε) (`VPPath`). On any affine path the objective learns, at the level (α, s) = (a_t, b_t),
the matrix B of w = −B y ≈ E[x₁ − x₀ | x_t = y] (the linear path's target, CFM at that level), and the
path's velocity is

    v(y) = E[ȧx₁ + ḃx₀ | y] = p y + q w(y),   p = (ȧ + ḃ)/(a + b),   q = (ȧb − ḃa)/(a + b)

(ȧx₁ + ḃx₀ = p y + q(x₁ − x₀)), so G = pI − qB in the schemes above; linear p = 0, q = 1. `ode`: per
eigenvalue x_t = √(c_t/c_0) x₀, c_t = a_t²λ + b_t², the output law M₁M₀⁻¹, M_t = a_t²Σ + b_t²I.

`shift` s: SD3's time shift (diffusers' FlowMatchEulerDiscreteScheduler, σ = 1 − t ↦ sσ/(1 + (s − 1)σ)) on
the grid, t_k = φ_s(k/K), φ_s(u) = u/(s − (s − 1)u), so s > 1 crowds the steps near the noise (t = 0); the
issue's t ↦ st/(1 + (s − 1)t) is φ_{1/s}. Stage c of step k is read at t_k + c(t_{k+1} − t_k).

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
from gsm.samplers.vp_schemes import VPSchedule
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
PATHS = ("linear", "vp")


class LinearPath:
    """x_t = t x₁ + (1 − t)x₀: (a, b, ȧ, ḃ) = (t, 1 − t, 1, −1)."""

    linear = True

    @staticmethod
    def coefficients(t: torch.Tensor):
        t = torch.as_tensor(t, dtype=F64)
        return t.clone(), 1.0 - t, torch.ones_like(t), -torch.ones_like(t)


@dataclass(frozen=True)
class VPPath:
    """sampler=vp's schedule in flow time (module doc): τ = T − t(T − ε), a = e^{−B(τ)/2},
    b = √(1 − e^{−B(τ)}), ȧ = ½(T − ε)β(τ)a, ḃ = −(T − ε)β(τ)a²/(2b) (dτ/dt = −(T − ε)). Needs ε > 0
    (b = 0 at ε = 0, ḃ infinite)."""

    schedule: VPSchedule
    eps: float

    linear = False

    def coefficients(self, t: torch.Tensor):
        """(a, b, ȧ, ḃ) at flow times t (n,) float64, each (n,)."""
        span = self.schedule.T - self.eps
        tau = self.schedule.T - torch.as_tensor(t, dtype=F64) * span
        a, b = self.schedule.alpha_std(tau)
        beta = self.schedule.beta_min + tau * (self.schedule.beta_max - self.schedule.beta_min)
        return a, b, 0.5 * span * beta * a, -span * beta * a * a / (2 * b)


def velocity_rates(path, t: torch.Tensor):
    """(p, q) (n,) of v = p y + q w on the path at times t: p = (ȧ + ḃ)/(a + b), q = (ȧb − ḃa)/(a + b)."""
    a, b, da, db = path.coefficients(t)
    return (da + db) / (a + b), (da * b - db * a) / (a + b)


def shifted_grid(steps: int, shift: float) -> list[float]:
    """t_k = φ_s(k/K), φ_s(u) = u/(s − (s − 1)u), k = 0..K (module doc; s = 1: k/K exactly)."""
    if shift == 1:
        return [k / steps for k in range(steps + 1)]
    return [u / (shift - (shift - 1) * u) for u in (k / steps for k in range(steps + 1))]


def _rk_fn(levels, h, tableau, rates=None):
    a, b, _ = tableau
    if rates is None:       # the linear path: G = −B
        return lambda A, alg: explicit_rk_step([-A(l) for l in levels], h, a, b, alg)
    return lambda A, alg: explicit_rk_step([p * alg.one(A(l)) - q * A(l) for l, (p, q) in zip(levels, rates)],
                                           h, a, b, alg)


def _stage_time(grid, k, c, steps, shift):
    if shift == 1:          # c ∈ {0, ½, 1}: exact binary fractions of the uniform grid
        return (2 * k + round(2 * c)) / (2 * steps)
    return grid[k] if c == 0 else grid[k + 1] if c == 1 else grid[k] + c * (grid[k + 1] - grid[k])


def flow_chain(scheme: str, steps: int, shift: float = 1.0, path=None):
    """The scheme's chain on t_k = φ_s(k/K) (`shifted_grid`) for the velocity G = pI − qB of `path`
    (None: linear, G = −B) and its level times: (LinearChain, times (L,) float64), levels numbered in order
    of first use."""
    grid, index, times = shifted_grid(steps, shift), {}, []
    fns, reads, stages = [], [], []
    tableau = TABLEAUS[scheme]
    for k in range(steps):
        ls = []
        for c in tableau[2]:
            t = _stage_time(grid, k, c, steps, shift)
            if t not in index:
                index[t] = len(times)
                times.append(t)
            ls.append(index[t])
        stages.append((ls, 1.0 / steps if shift == 1 else grid[k + 1] - grid[k]))
        reads.append(tuple(ls))
    times = torch.tensor(times, dtype=F64)
    rates = None if path is None or path.linear \
        else list(zip(*(r.tolist() for r in velocity_rates(path, times))))
    for ls, h in stages:
        fns.append(_rk_fn(ls, h, tableau, None if rates is None else [rates[l] for l in ls]))
    chain = LinearChain(fns, torch.zeros(steps, dtype=F64), reads, len(times))
    return chain, times


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
    """The law map of the exact flow (scheme=ode): the output variance c₁/c₀, c_t = a_t²λ + b_t² (λ on the
    linear path) for the exact velocity."""

    lam: torch.Tensor
    ends: tuple = (0.0, 1.0, 1.0, 0.0)      # (a₀, b₀, a₁, b₁)

    def variance(self, a: torch.Tensor) -> torch.Tensor:
        a0, b0, a1, b1 = self.ends
        return (a1 * a1 * self.lam + b1 * b1) / (a0 * a0 * self.lam + b0 * b0)

    def divided_differences(self, *args, **kwargs):
        raise ValueError("sampler.scheme=ode is the exact flow of the exact velocity: it needs model=oracle")

    tau_cells = divided_differences


@dataclass
class Flow(Sampler):
    """`sampler=flow` (module doc): scheme euler | midpoint | heun | rk4 | ode, steps K (or nfe, the velocity
    evaluations: K = nfe // evaluations per step), particles M, path linear | vp (vp: sampler=vp's β_min,
    β_max, T, ε), the time shift s > 0 of the grid."""

    scheme: str = "euler"
    steps: int | None = 10
    particles: int = 2000
    nfe: int | None = None
    path: str = "linear"
    shift: float = 1.0
    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    eps: float = 1e-3

    reads = "velocity"              # reads a velocity field (objective=cfm), not a score
    init_var = 1.0                  # the source N(0, I)
    requires_linear_score = False   # a neural velocity runs the same tableaux (`rk_step`); scheme=ode refuses it

    def __post_init__(self):
        choice("sampler.scheme", self.scheme, SCHEMES)
        number("sampler.particles", self.particles, 2, integer=True)
        self.shift = number("sampler.shift", self.shift, 0, low_open=True)
        self.affine = self._path()
        self.K = self._steps()
        if self.scheme == "ode":
            self.chain, self.times, self.evaluations = None, torch.tensor([0.0, 1.0], dtype=F64), 0
        else:
            self.chain, self.times = flow_chain(self.scheme, self.K, self.shift, self.affine)
            self.evaluations = len(TABLEAUS[self.scheme][1]) * self.K
        self.root = None
        self.oracle_only = ("sampler.scheme must be euler | midpoint | heun | rk4 with a learned velocity "
                            "(ode is the exact flow of the exact velocity: model=oracle), got ode") \
            if self.scheme == "ode" else None

    def _path(self):
        """The path object (`LinearPath`, `VPPath`); vp checks its schedule and ε ∈ (0, T)."""
        choice("sampler.path", self.path, PATHS)
        if self.path == "linear":
            return LinearPath()
        T = number("sampler.T", self.T, 0, low_open=True)
        beta_min = number("sampler.beta_min", self.beta_min, 0, low_open=True)
        schedule = VPSchedule(beta_min, number("sampler.beta_max", self.beta_max, beta_min), T)
        eps = number("sampler.eps", self.eps, 0, T, low_open=True, high_open=True,
                     why="sampler.path=vp: b_t = 0 at ε = 0, where the path's rate ḃ is infinite")
        return VPPath(schedule, eps)

    def _ends(self) -> tuple:
        a, b, _, _ = self.affine.coefficients(torch.tensor([0.0, 1.0], dtype=F64))
        return float(a[0]), float(b[0]), float(a[1]), float(b[1])

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
        """The path x_t = a_t x₁ + b_t x₀ as levels: α_l = a(t_l), s_l = b(t_l) (linear: t_l, 1 − t_l;
        σ unused)."""
        a, b, _, _ = self.affine.coefficients(self.times)
        return a, b

    def bind(self, cov: torch.Tensor) -> dict:
        """Keeps (M₁M₀⁻¹)^{½} for the exact flow (linear: Σ^{½}); reports nfe and steps."""
        if self.chain is None:
            lam, U = torch.linalg.eigh(cov.to(F64))
            self.root = (U * ExactFlowLaw(lam.clamp_min(0), self._ends()).variance(None).sqrt()) @ U.T
        return {"nfe": self.evaluations, "steps": self.K}

    def _require_root(self):
        if self.root is None:
            raise ValueError("sampler.scheme=ode needs the target covariance (Flow.bind(Σ) before sampling)")
        return self.root

    def covariance(self, A: torch.Tensor) -> torch.Tensor:
        """The exact law (R, d, d): the chain's, or M₁M₀⁻¹ (Σ on the linear path) for the exact flow."""
        if self.chain is not None:
            return super().covariance(A)
        root = self._require_root().to(A.device)
        return (root @ root).expand(A.shape[0], *root.shape).clone()

    def sample(self, model, replicates: int, dim: int, generator=None, device="cpu", progress=False,
               dtype=torch.float32) -> torch.Tensor:
        """M particles per replicate (R, M, d) from N(0, I) through the chain (or the root for ode); a non-linear
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
        """The scheme on points x (R, M, d) at t = 0 for any learned w = velocity(y, l) (l the level index): K
        steps of `rk_step` on the chain's grid t_k = φ_s(k/K), stage i of step k at the level the chain reads
        there (`chain.levels[k]`), integrating the path's velocity p y + q w (linear path: w itself)."""
        if self.chain is None:
            raise ValueError(self.oracle_only)
        tableau, grid = TABLEAUS[self.scheme], shifted_grid(self.K, self.shift)
        rates = None if self.affine.linear else [r.tolist() for r in velocity_rates(self.affine, self.times)]

        def stage(l):
            if rates is None:
                return lambda y: velocity(y, l)
            return lambda y: rates[0][l] * y + rates[1][l] * velocity(y, l)
        for k, levels in enumerate(self.chain.levels):
            h = 1.0 / self.K if self.shift == 1 else grid[k + 1] - grid[k]
            x = rk_step([stage(l) for l in levels], x, h, tableau)
        return x

    def law(self, lam: torch.Tensor):
        return ExactFlowLaw(lam.to(F64), self._ends()) if self.chain is None else super().law(lam)
