"""The VP SDE and its samplers (Pierret & Galerne, arXiv 2405.14250), exactly, for linear scores.

Forward process (Song's convention; P–G's β is half of this one):

    dx = −½β(t) x dt + √β(t) dW,   β(t) = β_min + t(β_max − β_min),   B(t) = ∫₀ᵗ β,   0 ≤ t ≤ T,
    x_t = α_t x₀ + s_t z,  α_t = e^{−B(t)/2},  s_t² = 1 − e^{−B(t)},  Σ_t = e^{−B}Σ + (1 − e^{−B}) I.

Reverse time u (t = T − u), score s_t(y) = −A_t y (exact: A_t = Σ_t⁻¹):

    backward SDE   dy = [½β y + β s_t(y)] du + √β dW,
    flow ODE       dy = ½β (y + s_t(y)) du = G(t) y du,   G(t) = ½β(t)(I − A_t).

Grid: t_k = T − k(T − ε)/K, k = 0..K (uniform, from T down to the truncation time ε); step k goes
t_k → t_{k+1}, h = t_k − t_{k+1}, ΔB_k = B(t_k) − B(t_{k+1}). Every scheme is a linear chain
x ← M_k x + √q_k ξ (`gsm.chain`):

    em     M = (1 + ½hβ_k) I − hβ_k A_{t_k},                q = hβ_k                  (P–G eqs. 10–11)
    ei     M = e^{ΔB/2} I − 2(e^{ΔB/2} − 1) A_{t_k},          q = e^{ΔB} − 1             (P–G eqs. 12–13)
    ddpm   M = (I − b_k A_{t_k})/√(1 − b_k), b_k = hβ_k,    q = b_k (needs b_k < 1)    (P–G eqs. 14–15)
    euler  explicit RK on G: M = I + h G(t_k)                                          (P–G eqs. 16–17)
    heun   M = I + (h/2)(G(t_k) + G(t_{k+1})(I + h G(t_k)))                            (P–G eqs. 18–19)
    rk4    classical RK4, stages at t_k, t_k − h/2 (twice), t_{k+1}                     (P–G eqs. 20–23)

with β_k = β(t_k). Score evaluations (`nfe`): K for em, ei, ddpm, euler; 2K for heun; 4K for rk4
(P–G's table counts grid points instead: see README). The levels (score times) are the distinct
evaluation times: t_0..t_{K−1} (one-stage schemes), t_0..t_K (heun), and t_0, t_0 − h/2, t_1, ...,
t_K (rk4, 2K + 1 levels); level l is trained by DSM at α = e^{−B/2}, s² = 1 − e^{−B}.

Exact continuous laws (P–G eqs. 7–8), per eigenvalue, σ_t = e^{−B(t)}λ + 1 − e^{−B(t)}, from v_T:

    sde   v_ε = σ_ε + (v_T − σ_T) e^{−(B(T) − B(ε))} σ_ε²/σ_T²,
    ode   v_ε = v_T σ_ε/σ_T.

(Derivation, per eigenvalue, u = T − t: the SDE gives dv/du = β(1 − 2/σ)v + β, solved by v = σ since
dσ/du = β(σ − 1); so w = v − σ obeys dw/du = β(1 − 2/σ)w, and with β/σ = β + d ln σ/dt,
∫_ε^T β(1 − 2/σ) dt = −(B(T) − B(ε)) − 2 ln(σ_T/σ_ε): w_ε = w_T e^{−ΔB} σ_ε²/σ_T². The ODE gives
dv/du = β(1 − 1/σ)v = v d ln σ/du, so v/σ is constant.) Initialisation: `normal` v_T = 1
(N(0, I)) or `prior` Σ_T (then the continuous laws are exact, v_ε = σ_ε).

Prediction (`vp_prediction`): bias = Σ(√λ − √h(λ))², h the exact-score output variance, split into
truncation (Σ(√λ − √σ_ε)²), initialisation (N(0, I) instead of p_T, through the scheme) and
discretisation (the rest); 1/N from the divided differences of h as a function of Σ̂'s eigenvalue
(plug-in scores (α_l²Σ̂ + s_l²I)⁻¹ make the output h(Σ̂), `gsm.chain.divided_differences_from_jets`);
τ from `gsm.chain.chain_tau_kernel` with the stationary per-level SGD variance of
`gsm.diffusion.level_sgd_variance`; 1/M particles as `gsm.diffusion.diffusion_prediction`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gsm.figures import log_figure
from gsm.chain import (LinearChain, affine_step, chain_tau_kernel, divided_differences_from_jets,
                       explicit_rk_step, inverse_affine_series)

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
        e = torch.exp(-B).unsqueeze(-1) if B.ndim else torch.exp(-B)
        return e * lam.to(_F64) + (1 - e)


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


def _rk_fn(levels, half_betas, h, tableau):
    a, b, _ = tableau

    def fn(A, alg):
        G = [r * (alg.one(A(l)) - A(l)) for l, r in zip(levels, half_betas)]
        return explicit_rk_step(G, h, a, b, alg)
    return fn


def vp_chain(scheme: str, schedule: VPSchedule, steps: int, eps: float):
    """The scheme's linear chain on the grid `vp_grid(T, ε, K)` and its level times.
    Returns (LinearChain, times (L,) float64)."""
    if scheme not in SDE_SCHEMES + ODE_SCHEMES:
        raise ValueError(f"sampler.scheme must be one of {' | '.join(SDE_SCHEMES + ODE_SCHEMES)} for a chain, "
                         f"got {scheme}")
    t = vp_grid(schedule.T, eps, steps).tolist()
    lv = _Levels()
    fns, q, reads = [], [], []
    for k in range(steps):
        t0, t1 = t[k], t[k + 1]
        h = t0 - t1
        if scheme in SDE_SCHEMES:
            l = lv(t0)
            bk = h * schedule.beta(t0)
            if scheme == "em":
                c, g, qk = 1 + 0.5 * bk, bk, bk
            elif scheme == "ei":
                dB = schedule.B(t0) - schedule.B(t1)
                c, g, qk = math.exp(0.5 * dB), 2 * math.expm1(0.5 * dB), math.expm1(dB)
            else:
                if not bk < 1:
                    raise ValueError(f"sampler.steps must be large enough that b_k = hβ(t_k) < 1 for scheme=ddpm "
                                     f"(K > {(schedule.T - eps) * schedule.beta_max:.4g}), got {steps}")
                c, g, qk = 1 / math.sqrt(1 - bk), bk / math.sqrt(1 - bk), bk
            fns.append(_affine_fn(l, c, g))
            reads.append((l,))
            q.append(qk)
        else:
            tab = TABLEAUS[scheme]
            times = [t0 if ci == 0 else t1 if ci == 1 else 0.5 * (t0 + t1) for ci in tab[2]]
            ls = [lv(s) for s in times]
            fns.append(_rk_fn(ls, [0.5 * schedule.beta(s) for s in times], h, tab))
            reads.append(tuple(ls))
            q.append(0.0)
    chain = LinearChain(fns, torch.tensor(q, dtype=_F64), reads, len(lv.times))
    return chain, torch.tensor(lv.times, dtype=_F64)


def exact_scores(lam: torch.Tensor, schedule: VPSchedule, times: torch.Tensor) -> torch.Tensor:
    """a_l(λ) = 1/σ_{t_l}(λ), the exact score per eigenvalue at each level: (d,), (L,) → (L, d)."""
    return 1.0 / schedule.marginal(lam, times)


def continuous_variance(scheme: str, lam: torch.Tensor, schedule: VPSchedule, eps: float, init_var) -> torch.Tensor:
    """P–G eqs. 7–8 (module doc): the law at t = ε of the exact backward SDE (`sde`) or flow ODE (`ode`)
    started from variance init_var (a number or (d,)) at T. (d,) float64."""
    sT, se = schedule.marginal(lam, schedule.T), schedule.marginal(lam, eps)
    if scheme == "ode":
        return init_var * se / sT
    decay = math.exp(-(schedule.B(schedule.T) - schedule.B(eps)))
    return se + (init_var - sT) * decay * se ** 2 / sT ** 2


def _check_eigenvalues(lam) -> torch.Tensor:
    lam = torch.as_tensor(lam, dtype=_F64).detach().cpu()
    if lam.ndim != 1 or lam.numel() == 0 or not torch.isfinite(lam).all() or not (lam >= 0).all():
        raise ValueError("eigenvalues must be a non-empty 1-D tensor of finite values >= 0")
    return lam


# -------------------------------------------------------------------------------------------- sampler

@dataclass
class VP:
    """`sampler=vp`: the VP SDE/ODE schemes of Pierret & Galerne (module doc) on the pipeline's interface.

    scheme: em | ei | ddpm | euler | heun | rk4 | sde | ode; steps K (or nfe, the score-evaluation budget:
    K = nfe // evaluations per step; set exactly one); eps: ε ≥ 0; init: normal (N(0, I)) | prior (p_T);
    spectral: run oracle / train.solver=exact scores on the O(d·K) per-eigenvalue path."""

    scheme: str = "em"
    steps: int | None = 100
    nfe: int | None = None
    eps: float = 1e-3
    init: str = "normal"
    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    particles: int = 2000
    spectral: bool = True
    particles_from: str = "auto"
    figure: bool = True

    def __post_init__(self):
        if self.particles_from not in ("auto", "chain", "law", "none"):
            raise ValueError(f"sampler.particles_from must be one of auto | chain | law | none, got {self.particles_from}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"sampler.scheme must be one of {' | '.join(SCHEMES)}, got {self.scheme}")
        if self.init not in INITS:
            raise ValueError(f"sampler.init must be one of {' | '.join(INITS)}, got {self.init}")
        if int(self.particles) != self.particles or self.particles < 2:
            raise ValueError(f"sampler.particles must be an integer >= 2, got {self.particles}")
        self.schedule = VPSchedule(float(self.beta_min), float(self.beta_max), float(self.T))
        if not (math.isfinite(self.eps) and 0 <= self.eps < self.T):
            raise ValueError(f"sampler.eps must be in [0, T) = [0, {self.T}), got {self.eps}")
        per = EVALS_PER_STEP[self.scheme]
        if self.scheme in EXACT_SCHEMES:
            self.K, self.chain = 0, None
            self.times = torch.tensor([float(self.T), float(self.eps)], dtype=_F64)
        else:
            if (self.steps is None) == (self.nfe is None):
                raise ValueError(f"sampler.steps must be null when sampler.nfe is set, and an integer >= 1 otherwise "
                                 f"(set exactly one), got steps={self.steps}, nfe={self.nfe}")
            if self.nfe is not None and (int(self.nfe) != self.nfe or self.nfe < per):
                raise ValueError(f"sampler.nfe must be an integer >= {per} for scheme={self.scheme}, got {self.nfe}")
            K = self.steps if self.steps is not None else int(self.nfe) // per
            if int(K) != K or K < 1:
                raise ValueError(f"sampler.steps must be an integer >= 1, got {self.steps}")
            self.K = int(K)
            self.chain, self.times = vp_chain(self.scheme, self.schedule, self.K, float(self.eps))
        self.evaluations = per * self.K
        self.init_cov = None

    # -- the pipeline's interface -------------------------------------------------------------
    def noise_levels(self, sigma=None):
        """α_l = e^{−B(t_l)/2}, s_l = √(1 − e^{−B(t_l)}) at the scheme's evaluation times (σ unused)."""
        return self.schedule.alpha_std(self.times)

    def bind(self, cov: torch.Tensor) -> dict:
        """Called by the pipeline with Σ (d, d): init=prior starts from Σ_T. Returns results entries (nfe)."""
        if self.init == "prior":
            eT = math.exp(-self.schedule.B(self.T))
            cov = cov.to(_F64)
            self.init_cov = eT * cov + (1 - eT) * torch.eye(cov.shape[-1], dtype=_F64, device=cov.device)
        return {"nfe": self.evaluations, "steps": self.K}

    def _init(self):
        if self.init == "prior":
            if self.init_cov is None:
                raise ValueError("sampler.init=prior needs the target covariance (VP.bind(Σ) before sampling)")
            return self.init_cov
        return 1.0

    def _require_chain(self):
        if self.chain is None:
            raise ValueError(f"sampler.scheme={self.scheme} is the exact continuous law: it needs model=oracle "
                             "(and the spectral path, sampler.spectral=true)")

    def covariance(self, A: torch.Tensor, trajectory: bool = False) -> torch.Tensor:
        """Exact law of the output for scores A (R, L, d, d) → (R, d, d) (any A: `LinearChain.covariance`)."""
        self._require_chain()
        return self.chain.covariance(A, self._init(), trajectory)

    def sample(self, model, replicates: int, dim: int, generator=None, device="cpu", progress=False,
               dtype=torch.float64):
        """M particles per replicate, from N(0, I) or N(0, Σ_T), run through the scheme: (R, M, d)."""
        self._require_chain()
        x = torch.randn(replicates, self.particles, dim, generator=generator, device=device, dtype=dtype)
        if self.init == "prior":
            x = x @ torch.linalg.cholesky(self._init()).to(device=device, dtype=dtype).T
        if hasattr(model, "matrices"):
            return self.chain.sample(model.matrices().to(device), x, generator)
        raise ValueError("sampler=vp needs a linear score model (model=linear | oracle)")

    def unstable(self, A: torch.Tensor) -> torch.Tensor:
        """Only non-finite A is flagged (a finite chain has a finite law). (R,) bool."""
        return ~torch.isfinite(A).flatten(1).all(1)

    def prediction(self, eigenvalues, *, n=None, sigma=None, tau=0.0, batch_size=1, particles=None,
                   symmetric=False, sgd_steps=None, init="zeros") -> dict:
        """`vp_prediction` for this sampler (σ unused; sgd_steps/init: the finite SGD budget)."""
        return vp_prediction(eigenvalues, self, n=n, tau=tau, batch_size=batch_size, particles=particles,
                             symmetric=symmetric, sgd_steps=sgd_steps, init=init)

    def log_extra(self, writer, A, cov, step, max_points: int = 50, max_replicates: int = 16) -> None:
        """W2²(law of x_{t_k}, p_{t_k}) along the trajectory for the learned scores (mean over ≤ 16
        replicates) and the oracle, and the P–G Fig. 1 figure for every scheme (`trajectory_figure`)."""
        if self.chain is None:
            return
        from gsm.metrics import bures_wasserstein2
        cov = cov.to(_F64)
        t = vp_grid(self.T, self.eps, self.K)
        eye = torch.eye(cov.shape[-1], dtype=_F64, device=cov.device)
        e = torch.exp(-self.schedule.B(t)).view(-1, 1, 1)
        marg = e * cov + (1 - e) * eye
        pts = torch.unique(torch.linspace(0, self.K, min(max_points, self.K + 1)).round().long())
        lam = torch.linalg.eigvalsh(cov)
        traj = self.chain.covariance(A[:max_replicates], self._init(), trajectory=True)
        w2 = bures_wasserstein2(marg[pts], traj[:, pts]).mean(0)
        for p, w in zip(pts.tolist(), w2.tolist()):
            writer.add_scalar("vp/w2_trajectory_learned", w, p)   # plain: the default TensorBoard loader
        if self.figure:
            log_figure(writer, "vp/trajectory_all_schemes", trajectory_figure(lam.clamp_min(0), self), step)


# --------------------------------------------------------------------------------- spectral laws

def spectral_output_variance(sampler: VP, lam: torch.Tensor, scores=None, trajectory: bool = False):
    """Output variance per eigenvalue (O(d·K)): the chain with diagonal scores `scores` (..., L, d)
    (None: exact scores of λ), or the continuous law for sde/ode. Initial variance 1 or σ_T(λ)."""
    lam = lam.to(_F64)
    v0 = sampler.schedule.marginal(lam, sampler.T) if sampler.init == "prior" else 1.0
    if sampler.chain is None:
        if scores is not None:
            raise ValueError(f"sampler.scheme={sampler.scheme} is the exact continuous law: it needs model=oracle")
        return continuous_variance(sampler.scheme, lam, sampler.schedule, sampler.eps, v0)
    a = exact_scores(lam, sampler.schedule, sampler.times) if scores is None else scores
    return sampler.chain.variance(a, v0, trajectory)


def _singular_score_check(sampler: VP, lam: torch.Tensor, what: str = "Σ"):
    if sampler.chain is not None and bool((sampler.times == 0).any()) and bool((lam <= 0).any()):
        raise ValueError(f"sampler.eps must be > 0 for scheme={sampler.scheme} when {what} is singular "
                         "(the scheme evaluates the score at t = 0, where it is Σ⁻¹)")


# ------------------------------------------------------------------------------------- prediction

def vp_prediction(lam, sampler: VP, *, n=None, tau=0.0, batch_size=1, particles=None, symmetric=False,
                  sgd_steps=None, init="zeros") -> dict:
    """E[W2²(N(0, Σ), law of the VP sampler's output)] ≈ bias + (1/N)ΣK_N + τΣK_τ [+ (1/M)ΣK_M].

    bias (exact): truncation Σ(√λ − √σ_ε)², initialisation (the scheme from N(0, I) vs from p_T; 0 for
    init=prior) and discretisation (the scheme from p_T vs the exact law σ_ε). 1/N: K_N = (1+δ_ij)λ_iλ_j
    [½W_ij H¹² + ρ_i H²] (`output_divided_differences`: the output as a function of Σ̂'s eigenvalue,
    divided differences from 4-term jets, O(d·K + d²)). τ: `chain_tau_kernel` with `level_sgd_variance`
    (stationary SGD at every level; first order in τ). 1/M: ½(1+δ_ij)W_ij h_i h_j.

    sgd_steps = S (with tau > 0, symmetric=False): a finite SGD budget from A₀ = a₀I (`init`), as
    `gsm.diffusion.diffusion_prediction`: the exact mean score after S steps,
    E[a_l] = 1/m + (a₀ − 1/m)(1 − τs²m/L)^S (m = α²μ + s², L levels drawn uniformly; a function of Σ̂,
    so it also enters the 1/N term) gives `sgd_mean_offset` (part of `optimization`), and the τ term uses
    the transient covariance and Cov(Δ_ij, Δ_ji) of `gsm.diffusion.level_sgd_transient` around the mean
    scores. A level at t = 0 (ε = 0, heun/rk4) has s = 0: SGD never moves it (E[a] = a₀).
    Keys as `gsm.diffusion.diffusion_prediction`."""
    from gsm.diffusion import SGDBudget, level_sgd_transient, level_sgd_variance
    from gsm.theory import SGD_INIT, bures_second_order_weights, kernel_m, kernel_n
    lam = _check_eigenvalues(lam)
    d = lam.numel()
    _singular_score_check(sampler, lam)
    sch, chain = sampler.schedule, sampler.chain
    warnings = []
    budget = None
    if sgd_steps is not None and tau > 0 and chain is not None:
        if init not in SGD_INIT:
            raise ValueError(f"init must be one of {' | '.join(SGD_INIT)}, got {init}")
        if symmetric:
            warnings.append("vp: the finite SGD budget is not modelled for the symmetric variant (stationary SGD assumed)")
        else:
            budget = SGDBudget(int(sgd_steps), float(tau), int(batch_size), init)
    h_exact = spectral_output_variance(sampler, lam)
    h_prior = spectral_output_variance(_with_init(sampler, "prior"), lam)
    se = sch.marginal(lam, sampler.eps)
    w2 = lambda v: float(((lam.sqrt() - v.clamp_min(0).sqrt()) ** 2).sum())
    out = {"truncation": w2(se), "discretization": w2(h_prior) - w2(se), "initialization": w2(h_exact) - w2(h_prior)}
    v0 = sch.marginal(lam, sampler.T) if sampler.init == "prior" else torch.ones_like(lam)
    h, transient = h_exact, None
    if budget is not None:
        alpha, s = sch.alpha_std(sampler.times)
        a_mean, var, cross = level_sgd_transient(lam, alpha ** 2, chain.n_levels, budget)
        a_mean[s == 0] = SGD_INIT[init]                      # s = 0: the DSM gradient vanishes, A stays at A₀
        transient = (a_mean, var / tau, cross / tau)
        h = chain.variance(a_mean, v0)
    out["sgd_mean_offset"] = w2(h) - w2(h_exact)
    rho, W = bures_second_order_weights(lam, h)
    W = torch.nan_to_num(W, nan=0.0)     # λ_i = λ_j = 0: B² does not see that block at second order (Σ^½ kills it)
    zero = torch.zeros(d, d, dtype=_F64)
    K_N = zero
    if n is not None and chain is not None:
        alpha, s = sch.alpha_std(sampler.times)
        if bool((s == 0).any()) and n <= d:
            raise ValueError(f"data.n must be > d = {d} for scheme={sampler.scheme} with eps = 0 "
                             "(the plug-in score at t = 0 is Σ̂⁻¹)")
        H1, H2 = output_divided_differences(chain, lam, alpha ** 2, s ** 2, v0, budget)
        K_N = kernel_n(lam, H1, H2, rho, W)
    out["generalization"] = float(K_N.sum()) / n if n is not None else 0.0
    K_tau = zero
    if tau > 0 and chain is not None:
        alpha, s = sch.alpha_std(sampler.times)
        if transient is None:
            V = level_sgd_variance(lam, alpha ** 2, batch_size, symmetric)
            K_tau = chain_tau_kernel(chain, exact_scores(lam, sch, sampler.times), V, rho, W, v0, symmetric)
        else:
            K_tau = chain_tau_kernel(chain, transient[0], transient[1], rho, W, v0, cross=transient[2])
    out["optimization"] = out["sgd_mean_offset"] + tau * float(K_tau.sum())
    K_M = kernel_m(h, W)
    out["particles"] = float(K_M.sum()) / particles if particles is not None else 0.0
    out["total"] = w2(h_exact) + out["generalization"] + out["optimization"] + out["particles"]
    if n is not None and n < 5 * d:
        warnings.append(f"N = {n} < 5d = {5 * d}: the 1/N term may be off by more than ~5% (note §5.5)")
    out.update(kernel_n=K_N, kernel_tau=K_tau, kernel_m=K_M, bias_per_eigenvalue=(lam.sqrt() - h.sqrt()) ** 2,
               sampler_variance=h, eigenvalues=lam, d_over_n=d / n if n is not None else 0.0, warnings=warnings)
    return out


def _with_init(sampler: VP, init: str) -> VP:
    other = object.__new__(VP)
    other.__dict__.update(sampler.__dict__)
    other.init = init
    return other


def mean_score_series(lam: torch.Tensor, alpha2: torch.Tensor, s2: torch.Tensor, levels: int, budget=None):
    """Series in μ (L, d, 4) of the score at each level as a function of Σ̂'s eigenvalue μ: the plug-in
    1/m, m = α²μ + s², or after a finite SGD budget its mean 1/m + (a₀ − 1/m) r^S, r = 1 − τs²m/L (affine
    in μ, so r(μ + x)^S = Σ_k C(S, k) r^{S−k} (−τs²α²/L)^k x^k)."""
    inv = inverse_affine_series(lam, alpha2, s2)
    if budget is None:
        return inv
    from gsm.chain import _series_mm
    from gsm.theory import SGD_INIT
    c = budget.tau * s2.view(-1, 1) / levels
    r0 = 1 - c * (alpha2.view(-1, 1) * lam + s2.view(-1, 1))
    r1 = -c * alpha2.view(-1, 1)
    S = int(budget.steps)
    rS = torch.stack([math.comb(S, k) * r0 ** max(S - k, 0) * r1 ** k if k <= S else torch.zeros_like(r0)
                      for k in range(inv.shape[-1])], -1)
    a0 = torch.zeros_like(inv)
    a0[..., 0] = SGD_INIT[budget.init]
    mean = inv + _series_mm(a0 - inv, rS)
    return torch.where((s2 == 0).view(-1, 1, 1), a0, mean)


def output_divided_differences(chain: LinearChain, lam: torch.Tensor, alpha2: torch.Tensor, s2: torch.Tensor,
                               v0: torch.Tensor, budget=None):
    """Effective h^[1](λ_i, λ_j), h^[2](λ_i, λ_j, λ_i) (d, d) of the output law C = P(Σ̂) C_0 P(Σ̂)ᵀ + Q(Σ̂)
    under Σ̂ = Σ + E, plug-in scores 1/(α_l²Σ̂ + s_l²I), C_0 = diag(v0) fixed (init=prior: Σ_T of the
    true Σ, not a function of Σ̂). In Σ's eigenbasis, to second order in E (symmetric),

        C¹_ij = E_ij [p^[1]_ij (v0_i p_i + v0_j p_j) + Q^[1]_ij],
        C²_ii = Σ_m E_im² [2 p_i p^[2]_imi v0_i + (p^[1]_im)² v0_m + Q^[2]_imi],

    the brackets replacing h^[1] and h^[2] in K_N (for constant v0 they are the divided differences of
    h = p² v0 + Q, by the product rule)."""
    P, Q = chain.propagator_series(mean_score_series(lam, alpha2, s2, chain.n_levels, budget))
    p1, p2 = divided_differences_from_jets(lam, P)
    Q1, Q2 = divided_differences_from_jets(lam, Q)
    vp = v0 * P[:, 0]
    H1 = p1 * (vp.view(-1, 1) + vp.view(1, -1)) + Q1
    H2 = 2 * vp.view(-1, 1) * p2 + p1 ** 2 * v0.view(1, -1) + Q2
    return H1, H2


# ------------------------------------------------------------------------------------------ figures

def trajectory_figure(lam: torch.Tensor, sampler: VP, schemes=SDE_SCHEMES + ODE_SCHEMES):
    """P–G Fig. 1: W2(law_k, p_{t_k}) along the trajectory (x axis: t_k) for every scheme with the exact
    score, at the sampler's K, ε and init (the score evaluations differ: rk4 uses 4K)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lam = lam.to(_F64)
    t = vp_grid(sampler.T, sampler.eps, sampler.K)
    marg = sampler.schedule.marginal(lam, t)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for sc in schemes:
        if sc == "ddpm" and sampler.K * 1.0 <= (sampler.T - sampler.eps) * sampler.beta_max:
            continue
        other = VP(scheme=sc, steps=sampler.K, eps=sampler.eps, init=sampler.init, beta_min=sampler.beta_min,
                   beta_max=sampler.beta_max, T=sampler.T, particles=sampler.particles)
        traj = spectral_output_variance(other, lam, trajectory=True)
        w = ((marg.sqrt() - traj.clamp_min(0).sqrt()) ** 2).sum(-1).sqrt()
        ax.plot(t.numpy(), w.numpy(), label=f"{sc} ({other.evaluations} NFE)")
    ax.set(xlabel="t", ylabel="W2(law of x_t, p_t)", yscale="log", title=f"K = {sampler.K}, ε = {sampler.eps:g}")
    ax.invert_xaxis()
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
