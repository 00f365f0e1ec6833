"""The VP SDE and its samplers (Pierret & Galerne, arXiv 2405.14250), exactly, for linear scores.

Forward process (Song's convention; P–G's β is half of this one):

    dx = −½β(t) x dt + √β(t) dW,   β(t) = β_min + t(β_max − β_min),   B(t) = ∫₀ᵗ β,   0 ≤ t ≤ T,
    x_t = α_t x₀ + s_t z,  α_t = e^{−B(t)/2},  s_t² = 1 − e^{−B(t)},  Σ_t = e^{−B}Σ + (1 − e^{−B}) I.

Reverse time u (t = T − u), score s_t(y) = −A_t y (exact: A_t = Σ_t⁻¹):

    backward SDE   dy = [½β y + β s_t(y)] du + √β dW,
    flow ODE       dy = ½β (y + s_t(y)) du = G(t) y du,   G(t) = ½β(t)(I − A_t).

Grid: t_k = T − k(T − ε)/K, k = 0..K (uniform, from T down to the truncation time ε); step k goes
t_k → t_{k+1}, h = t_k − t_{k+1}, ΔB_k = B(t_k) − B(t_{k+1}). Every scheme is a linear chain
x ← M_k x + √q_k ξ (`gsm.theory.chain.LinearChain`):

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

Prediction: derived from the step map (`gsm.theory.law.ChainLaw`, `gsm.theory.prediction`) as for every
linear sampler; the bias Σ(√λ − √h(λ))² is split into truncation (Σ(√λ − √σ_ε)²), initialisation
(N(0, I) instead of p_T, through the scheme) and discretisation (the rest). The exact continuous laws
(sde, ode) are their own law map (`ContinuousLaw`, oracle scores only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gsm.checks import choice, number
from gsm.samplers.base import Sampler
from gsm.samplers.vp_schemes import (EVALS_PER_STEP, EXACT_SCHEMES, INITS, ODE_SCHEMES, SCHEMES, SDE_SCHEMES,
                                     VPSchedule, continuous_variance, exact_scores, vp_chain, vp_grid)
from gsm.theory.law import ChainLaw
from gsm.theory.prediction import w2_commuting

_F64 = torch.float64


@dataclass
class ContinuousLaw:
    """The law map of the exact continuous VP laws (scheme sde | ode, P–G eqs. 7–8): the exact scores only."""

    sampler: "VP"
    lam: torch.Tensor

    def variance(self, a: torch.Tensor) -> torch.Tensor:
        return self.sampler.spectral_variance(self.lam)

    def divided_differences(self, *args, **kwargs):
        raise ValueError(f"sampler.scheme={self.sampler.scheme} is the exact continuous law: it needs model=oracle")

    tau_cells = divided_differences


# -------------------------------------------------------------------------------------------- sampler

@dataclass
class VP(Sampler):
    """`sampler=vp`: the VP SDE/ODE schemes of Pierret & Galerne (module doc) on the pipeline's interface.

    scheme: em | ei | ddpm | euler | heun | rk4 | sde | ode; steps K (or nfe, the score-evaluation budget:
    K = nfe // evaluations per step; set exactly one); eps: ε ≥ 0; init: normal (N(0, I)) | prior (p_T);
    spectral: run oracle / train.solver=exact scores on the O(d·K) per-eigenvalue path."""
    requires_linear_score = True      # runs the chain through model.matrices()

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

    allows_singular = True          # rank-deficient Σ: the score is read at t ≥ ε > 0
    has_diagonal_law = False        # data.kind=texture: not supported

    def __post_init__(self):
        choice("sampler.particles_from", self.particles_from, ("auto", "chain", "law", "none"))
        choice("sampler.scheme", self.scheme, SCHEMES)
        choice("sampler.init", self.init, INITS)
        number("sampler.particles", self.particles, 2, integer=True)
        T = number("sampler.T", self.T, 0, low_open=True)
        beta_min = number("sampler.beta_min", self.beta_min, 0, low_open=True)
        self.schedule = VPSchedule(beta_min, number("sampler.beta_max", self.beta_max, beta_min), T)
        number("sampler.eps", self.eps, 0, T, high_open=True)
        per = EVALS_PER_STEP[self.scheme]
        if self.scheme in EXACT_SCHEMES:
            self.K, self.chain = 0, None
            self.times = torch.tensor([float(self.T), float(self.eps)], dtype=_F64)
        else:
            if (self.steps is None) == (self.nfe is None):
                raise ValueError(f"sampler.steps must be null when sampler.nfe is set, and an integer >= 1 otherwise "
                                 f"(set exactly one), got steps={self.steps}, nfe={self.nfe}")
            if self.nfe is not None:
                number("sampler.nfe", self.nfe, per, integer=True, why=f"scheme={self.scheme}")
            self.K = number("sampler.steps", self.steps, 1, integer=True) if self.steps is not None \
                else int(self.nfe) // per
            self.chain, self.times = vp_chain(self.scheme, self.schedule, self.K, float(self.eps))
        self.evaluations = per * self.K
        self.init_cov = None
        self._exact = None      # (λ, a, P, Q) of the last `exact_propagator`: one law per run, shared

    # -- the pipeline's interface -------------------------------------------------------------
    def spectral_path(self, score_is_spectral: bool) -> bool:
        """Per eigenvalue (O(d·K)) when sampler.spectral and the score is a function of Σ or Σ̂; the exact
        laws (scheme sde | ode) exist only there."""
        if self.spectral and score_is_spectral:
            return True
        if self.scheme in EXACT_SCHEMES:
            raise ValueError(f"sampler.scheme must be a discretisation (em | ei | ddpm | euler | heun | rk4) unless "
                             f"model=oracle with sampler.spectral=true (sde/ode are exact laws), got {self.scheme}")
        return False

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

    def initial_covariance(self):
        return self._init()

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
        if model.linear:
            return self.chain.sample(model.matrices().to(device), x, generator)
        raise ValueError("sampler=vp needs a linear score model (model=linear | oracle)")

    def initial_variance(self, lam: torch.Tensor):
        """v_T per eigenvalue: 1 (init=normal) or σ_T(λ) (init=prior)."""
        return self.schedule.marginal(lam, self.T) if self.init == "prior" else 1.0

    def exact_propagator(self, lam: torch.Tensor):
        """(a, P, h) at the exact scores a_l(λ) = 1/σ_{t_l}(λ) (L, d): the law h from this sampler's start
        v_T and P = Π_k m_k (`LinearChain.diagonal_propagator`, (d,) each), from which the law from any start
        follows (`exact_variance`). Computed once per λ and kept: the run's law, its bias terms (from N(0, I)
        and from p_T) and its prediction all read this one."""
        self._require_chain()
        lam = lam.to(_F64)
        memo = self._known(lam)
        if memo is None:
            a = exact_scores(lam, self.schedule, self.times)
            memo = self._exact = (lam.clone(), a, *self.chain.diagonal_propagator(a, self.initial_variance(lam)))
        return memo[1:]

    def _known(self, lam):
        """The kept (λ, a, P, h) when it is for these λ (compared by value: O(d)), else None."""
        memo = self._exact
        return memo if memo is not None and memo[0].shape == lam.shape and torch.equal(memo[0], lam) else None

    def exact_variance(self, lam: torch.Tensor, init_var=None) -> torch.Tensor:
        """Output variance per eigenvalue with the exact score, from this sampler's start (init_var None) or
        from v′ = init_var (a number or (d,)): h + P²(v′ − v_T) (`exact_propagator`), or the continuous law
        (sde | ode). (d,) float64."""
        lam = lam.to(_F64)
        if self.chain is None:
            v = self.initial_variance(lam) if init_var is None else init_var
            return continuous_variance(self.scheme, lam, self.schedule, self.eps, v)
        _, P, h = self.exact_propagator(lam)
        return h if init_var is None else h + P * P * (init_var - self.initial_variance(lam))

    def exact_target(self, lam: torch.Tensor):
        """(a*, h*): the exact scores (L, d) and the law there from this sampler's start (d,): what an
        oracle run's prediction reads (`sampler_prediction(..., target=)`) instead of computing them again."""
        lam = lam.to(_F64)
        a = exact_scores(lam, self.schedule, self.times) if self.chain is None else self.exact_propagator(lam)[0]
        return a, self.exact_variance(lam)

    def spectral_variance(self, lam: torch.Tensor, scores=None, trajectory: bool = False):
        """Output variance per eigenvalue (O(d·K)): the chain with diagonal scores `scores` (..., L, d)
        (None: exact scores of λ, `exact_variance`), or the continuous law for sde/ode. Initial variance 1 or σ_T(λ)."""
        lam = lam.to(_F64)
        v0 = self.initial_variance(lam)
        if self.chain is None and scores is not None:
            raise ValueError(f"sampler.scheme={self.scheme} is the exact continuous law: it needs model=oracle")
        if scores is None and not trajectory:
            return self.exact_variance(lam)
        if self.chain is None:
            return continuous_variance(self.scheme, lam, self.schedule, self.eps, v0)
        if scores is None:      # the run's own table when it has one (the figure after the run's law)
            memo = self._known(lam)
            scores = memo[1] if memo is not None else exact_scores(lam, self.schedule, self.times)
        return self.chain.variance(scores, v0, trajectory)

    def check_singular(self, lam: torch.Tensor, what: str = "Σ") -> None:
        """A scheme that reads the score at t = 0 (eps = 0) needs a non-singular Σ (or Σ̂): it is Σ⁻¹ there."""
        if self.chain is not None and bool((self.times == 0).any()) and bool((lam <= 0).any()):
            raise ValueError(f"sampler.eps must be > 0 for scheme={self.scheme} when {what} is singular "
                             "(the scheme evaluates the score at t = 0, where it is Σ⁻¹)")

    def check_prediction(self, lam: torch.Tensor, n=None) -> None:
        self.check_singular(lam)
        if n is not None and self.chain is not None and bool((self.times == 0).any()) and n <= lam.numel():
            raise ValueError(f"data.n must be > d = {lam.numel()} for scheme={self.scheme} with eps = 0 "
                             "(the plug-in score at t = 0 is Σ̂⁻¹)")

    def law(self, lam: torch.Tensor):
        """The chain's law map from v_T(λ), or the continuous law (sde | ode)."""
        return ContinuousLaw(self, lam) if self.chain is None else ChainLaw(self.chain, self.initial_variance(lam))

    def bias_terms(self, lam, h, sigma=None) -> dict:
        """truncation Σ(√λ − √σ_ε)², discretization (the scheme from p_T vs the exact law σ_ε) and
        initialization (from N(0, I) vs from p_T; 0 for init=prior)."""
        lam = lam.to(_F64)
        w_prior = w2_commuting(lam, self.exact_variance(lam, None if self.init == "prior" else
                                                        self.schedule.marginal(lam, self.T)))
        w_eps = w2_commuting(lam, self.schedule.marginal(lam, self.eps))
        return {"truncation": w_eps, "discretization": w_prior - w_eps, "initialization": w2_commuting(lam, h) - w_prior}

    def log_extra(self, writer, A, cov, step, max_points: int = 50, max_replicates: int = 16) -> None:
        """W2²(law of x_{t_k}, p_{t_k}) along the trajectory for the learned scores (mean over ≤ 16
        replicates) and the oracle, and the P–G Fig. 1 figure for every scheme (`trajectory_figure`)."""
        if self.chain is None:
            return
        from gsm.theory.bures import bures_wasserstein2
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
        from gsm.figures import figures_drawn, log_figure      # matplotlib only when a figure is drawn
        if self.figure and figures_drawn(writer):
            log_figure(writer, "vp/trajectory_all_schemes",
                       trajectory_figure(lam.clamp_min(0), self, learned=(t[pts].cpu(), w2.cpu())), step)


def trajectory_figure(lam: torch.Tensor, sampler: VP, schemes=SDE_SCHEMES + ODE_SCHEMES, learned=None):
    """P–G Fig. 1 in W2²: W2²(law_k, p_{t_k}) along the trajectory (x axis: t_k) for every scheme with the
    exact score, at the sampler's K, ε and init (the score evaluations differ: rk4 uses 4K); learned = (t, w2):
    the run's own scheme with its learned score (mean over replicates), drawn over them."""
    from gsm.figures import pyplot
    plt = pyplot()
    lam = lam.to(_F64)
    t = vp_grid(sampler.T, sampler.eps, sampler.K)
    marg = sampler.schedule.marginal(lam, t)
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for sc in schemes:
        if sc == "ddpm" and sampler.K * 1.0 <= (sampler.T - sampler.eps) * sampler.beta_max:
            continue
        other = VP(scheme=sc, steps=sampler.K, eps=sampler.eps, init=sampler.init, beta_min=sampler.beta_min,
                   beta_max=sampler.beta_max, T=sampler.T, particles=sampler.particles)
        traj = other.spectral_variance(lam, trajectory=True)
        w = ((marg.sqrt() - traj.clamp_min(0).sqrt()) ** 2).sum(-1)
        mine = sc == sampler.scheme
        ax.plot(t.numpy(), w.numpy(), lw=2.2 if mine else 1.0,
                label=f"{sc} ({other.evaluations} NFE), exact score" + (" (this run's scheme)" if mine else ""))
    if learned is not None:
        ax.plot(learned[0].numpy(), learned[1].numpy(), "k--", lw=1.5, label=f"{sampler.scheme}, learned score (this run)")
    ax.set(xlabel="t (the sampler runs from t = T, left, to t = ε, right)", ylabel="W2²(law of x_t, p_t)", yscale="log")
    ax.set_title(f"W2² along the trajectory, K = {sampler.K}, ε = {sampler.eps:g}", fontsize=9)
    ax.invert_xaxis()
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.set_layout_engine("tight")     # laid out when drawn, once, with the run title log_figure adds
    return fig
