"""sampler=diffusers: exact laws through diffusers' own steps against particles, DDPM/DDIM against gsm's own
laws (1e-10), the acceptance run, EDM against HeunDiscreteScheduler with Karras sigmas, the predictions.
Marked slow (importing the scheduler modules takes seconds), except the input checks."""
import math
import sys

import pytest
import torch

from gsm.samplers.reverse_chain import alphas_cumprod, ddim_chain, ddpm_chain, linear_beta_schedule
from gsm.theory.bures import bures_wasserstein2, second_moment
from gsm.theory.chain import exact_law, linear_maps
from gsm.theory.law import PushLaw
from gsm.theory.prediction import linear_prediction
from gsm.training.objectives import DSM, SGDBudget

F64 = torch.float64
TESTED = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
          "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler")


def random_basis(d, seed):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def perturbed_scores(s, Sigma, seed, scale=0.3):
    """Exact scores (α²Σ + s²I)⁻¹ at the sampler's levels, entries multiplied by 1 + scale·N(0, 1):
    non-symmetric, non-commuting. (1, L, d, d)."""
    al, st = s.noise_levels()
    d = Sigma.shape[-1]
    A = torch.linalg.inv(al.view(-1, 1, 1) ** 2 * Sigma + st.view(-1, 1, 1) ** 2 * torch.eye(d, dtype=F64))
    gen = torch.Generator().manual_seed(seed)
    return (A * (1 + scale * torch.randn(A.shape, generator=gen, dtype=F64))).unsqueeze(0)


def test_missing_extra_names_it(monkeypatch):
    from gsm.samplers.diffusers_scheduler import import_diffusers
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"gsm\[diffusers\]"):
        import_diffusers()


@pytest.mark.parametrize("kw, match", [
    (dict(scheduler="NoSuchScheduler"),
     "sampler.scheduler must be a diffusers scheduler class, got NoSuchScheduler.*tested: DDPMScheduler"),
    (dict(scheduler="DDIMScheduler", config={"no_such_key": 1}), "sampler.config.no_such_key must be a parameter"),
    (dict(scheduler="DDIMScheduler", config={"clip_sample": True}), "sampler.config.clip_sample must be false"),
    (dict(scheduler="DDIMScheduler", config={"prediction_type": "v_prediction"}), "prediction_type must be epsilon"),
    (dict(scheduler="DPMSolverMultistepScheduler", config={"algorithm_type": "nope"}), "sampler.config must be accepted"),
    (dict(steps=0), "sampler.steps must be an integer >= 1"),
    (dict(particles=1), "sampler.particles must be"),
    (dict(scheduler="DDIMScheduler", step_kwargs={"bogus": 1}), "sampler.step_kwargs.bogus must be"),
])
@pytest.mark.slow
def test_bad_input(kw, match):
    pytest.importorskip("diffusers")
    from gsm.samplers.diffusers_scheduler import Diffusers
    with pytest.raises(ValueError, match=match):
        Diffusers(**kw)


@pytest.mark.slow
@pytest.mark.parametrize("name, extra", [(n, {}) for n in TESTED] + [
    ("DPMSolverMultistepScheduler", {"config": {"algorithm_type": "sde-dpmsolver++"}}),
    ("EulerDiscreteScheduler", {"config": {"use_karras_sigmas": True}}),
    ("DDIMScheduler", {"step_kwargs": {"eta": 0.7}}),
])
def test_exact_law_matches_particles(name, extra, one_thread):
    """Non-commuting scores; exact law against M particles drawn with the scheduler's own noise, each entry
    within 4.5 s.e. (√((C_iiC_jj + C_ij²)/M); max over 6 entries)."""
    from gsm.samplers.diffusers_scheduler import Diffusers
    d, M = 3, 100_000
    s = Diffusers(scheduler=name, steps=8, particles=M, **extra)
    Sigma = (lambda U: (U * torch.tensor([0.2, 1.0, 3.0], dtype=F64)) @ U.T)(random_basis(d, 0))
    A = perturbed_scores(s, Sigma, 1)
    C = s.covariance(A)[0]
    gen = torch.Generator().manual_seed(2)
    x = math.sqrt(s.init_var) * torch.randn(1, M, d, generator=gen, dtype=F64)
    Chat = second_moment(s.push(A, x, generator=gen))[0]
    se = ((torch.diagonal(C).view(-1, 1) * torch.diagonal(C).view(1, -1) + C ** 2) / M).sqrt()
    assert ((Chat - C).abs() / se).max() < 4.5, (s.law_method, C, Chat)
    stochastic = {"DDPMScheduler": "randn_tensor", "EulerAncestralDiscreteScheduler": "randn_tensor"}
    expected = "variance_noise" if extra else stochastic.get(name, "deterministic")
    if extra.get("config", {}).get("use_karras_sigmas"):
        expected = "deterministic"
    assert s.law_method == expected


def _gsm_grid_law(s, A, chain_fn):
    """gsm's own law (the reverse chain's step map) on the grid the scheduler visits: ᾱ at 0 and at t + 1 for
    each queried 0-indexed t (diffusers' t ↔ gsm's t + 1); grid index k = l + 1 ↔ scheduler level K − k."""
    T = s.template.config.num_train_timesteps
    ts = [int(t) + 1 for t in s.level_timesteps]                      # decreasing
    ab = alphas_cumprod(linear_beta_schedule(T))[torch.tensor([0] + ts[::-1])]
    return chain_fn(ab).linear_chain().covariance(A.flip(1), 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name, steps, extra, chain_fn", [
    ("DDPMScheduler", 10, {}, lambda ab: ddpm_chain(ab, "beta_tilde")),                 # diffusers' defaults: leading
    ("DDPMScheduler", 1000, {}, lambda ab: ddpm_chain(ab, "beta_tilde")),               # every timestep
    ("DDPMScheduler", 20, {"config": {"timestep_spacing": "trailing"}}, lambda ab: ddpm_chain(ab, "beta_tilde")),
    ("DDIMScheduler", 10, {}, lambda ab: ddim_chain(ab, 0.0)),
    ("DDIMScheduler", 25, {"config": {"timestep_spacing": "trailing"}, "step_kwargs": {"eta": 0.6}},
     lambda ab: ddim_chain(ab, 0.6)),
])
def test_ddpm_ddim_equal_gsm(name, steps, extra, chain_fn, one_thread):
    """The law through diffusers' DDPMScheduler / DDIMScheduler equals gsm's ddpm_covariance on the same
    grid to 1e-10, for non-commuting scores (the respaced β_k = 1 − ᾱ_k/ᾱ_{k−1}, β̃ variance, no noise on
    the step to t = 0 ↔ diffusers' fixed_small, set_alpha_to_one)."""
    from gsm.samplers.diffusers_scheduler import Diffusers
    d = 3
    s = Diffusers(scheduler=name, steps=steps, **extra)
    Sigma = (lambda U: (U * torch.tensor([0.2, 1.0, 3.0], dtype=F64)) @ U.T)(random_basis(d, 3))
    A = perturbed_scores(s, Sigma, 4)
    C = s.covariance(A)
    assert (C - _gsm_grid_law(s, A, chain_fn)).abs().max() < 1e-10


@pytest.mark.slow
def test_trailing_equals_gsm_samplers(one_thread):
    """With timestep_spacing=trailing, diffusers' DDPM/DDIM laws equal gsm's DDPM(variance=beta_tilde) and
    DDIM samplers (steps=K, t_min=0) on the oracle score to 1e-10."""
    from gsm.samplers.diffusers_scheduler import Diffusers
    from gsm.samplers.ddpm import DDIM, DDPM
    Sigma = torch.diag(torch.tensor([0.25, 0.5, 1.0, 2.0], dtype=F64))
    for name, ours in (("DDPMScheduler", DDPM(steps=50, variance="beta_tilde")), ("DDIMScheduler", DDIM(steps=50))):
        s = Diffusers(scheduler=name, steps=50, config={"timestep_spacing": "trailing"})
        al, st = s.noise_levels()
        A = torch.linalg.inv(al.view(-1, 1, 1) ** 2 * Sigma + st.view(-1, 1, 1) ** 2 * torch.eye(4, dtype=F64))
        al2, st2 = ours.noise_levels()
        A2 = torch.linalg.inv(al2.view(-1, 1, 1) ** 2 * Sigma + st2.view(-1, 1, 1) ** 2 * torch.eye(4, dtype=F64))
        assert (s.covariance(A.unsqueeze(0)) - ours.covariance(A2.unsqueeze(0))).abs().max() < 1e-10


@pytest.mark.slow
def test_acceptance_dpmsolver_oracle(tmp_path, compose_cfg, one_thread):
    """`gsm sampler=diffusers sampler.scheduler=DPMSolverMultistepScheduler sampler.steps=20 model=oracle`:
    w2_exact = B²(Σ, C) with C from a plain diffusers loop on the d basis vectors, written here, to 1e-8."""
    from gsm.data.gaussian import make_gaussian
    from gsm.samplers.diffusers_scheduler import make_scheduler
    from gsm.pipeline.run import run
    from hydra.utils import instantiate
    cfg = compose_cfg("sampler=diffusers", "sampler.scheduler=DPMSolverMultistepScheduler", "sampler.steps=20",
                      "model=oracle", "data.dim=8", "replicates=2", "progress=false")
    res = run(cfg, tmp_path)
    Sigma = make_gaussian(instantiate(cfg.data.spectrum), cfg.data.basis, cfg.seed).covariance.to(F64)
    sched = make_scheduler("DPMSolverMultistepScheduler", {}, 20)
    ac = sched.alphas_cumprod
    x = torch.eye(8, dtype=F64)                                      # rows: the basis vectors
    for t in sched.timesteps:
        a = float(ac[int(t)])
        eps = math.sqrt(1 - a) * sched.scale_model_input(x, t) @ torch.linalg.inv(a * Sigma + (1 - a) * torch.eye(8, dtype=F64))
        x = sched.step(eps, t, x).prev_sample
    M = x.T
    C = float(sched.init_noise_sigma) ** 2 * M @ M.T
    w2 = float(bures_wasserstein2(Sigma, C))
    assert res["law_method"] == "deterministic" and res["nfe"] == 20
    assert abs(res["w2_exact"]["mean"] - w2) < 1e-8, (res["w2_exact"], w2)


@pytest.mark.slow
def test_edm_equals_heun_karras(one_thread):
    """Where the conventions meet: HeunDiscreteScheduler(use_karras_sigmas=True) with K steps is EDM's
    Algorithm 1 with σ_min, σ_max = the schedule's σ(t=0), σ(t=T−1), ρ = 7, K steps (ε̂ = σ(Σ+σ²I)⁻¹x in VE
    form; diffusers holds the Karras sigmas in float32): the output maps agree to 1e-5 relative, and
    both start from N(0, σ_max² I) (timestep_spacing linspace), so the laws agree too."""
    from gsm.samplers.diffusers_scheduler import Diffusers
    from gsm.samplers.edm import EDM
    d, K = 4, 12
    Sigma = (lambda U: (U * torch.tensor([0.05, 0.3, 1.0, 4.0], dtype=F64)) @ U.T)(random_basis(d, 5))
    h = Diffusers(scheduler="HeunDiscreteScheduler", steps=K, config={"use_karras_sigmas": True})
    ac = h.template.alphas_cumprod
    sig = ((1 - ac) / ac).sqrt()
    e = EDM(steps=K, sigma_min=float(sig[0]), sigma_max=float(sig[-1]), rho=7.0)
    assert len(h.call_timesteps) == e.nfe
    maps = []
    for s in (h, e):
        al, st = s.noise_levels()
        A = torch.linalg.inv(al.view(-1, 1, 1) ** 2 * Sigma + st.view(-1, 1, 1) ** 2 * torch.eye(d, dtype=F64))
        push = s.push if s is h else s.chain.push
        maps.append(linear_maps(push, A.unsqueeze(0), 0)[0][0])
    assert ((maps[0] - maps[1]).abs().max() / maps[1].abs().max()) < 1e-5, maps
    assert abs(h.init_var - e.init_var) < 1e-6 * e.init_var


def stationary_sgd_variance(alphas, stds, lam, tau, batch_size=1):
    """Var(Δ_ri) of stationary DSM-SGD per level (note §2.2, the data at level l are α_l x: eigenvalues
    α_l²λ): τ α_l²λ_r/(2b m_lr), m = α²λ + s², the same for every column i. (L, d, d)."""
    a2l = alphas.view(-1, 1) ** 2 * lam
    v = tau * a2l / (2 * batch_size * (a2l + stds.view(-1, 1) ** 2))
    return v.unsqueeze(-1).expand(-1, -1, lam.numel())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["UniPCMultistepScheduler", "EulerAncestralDiscreteScheduler"])
def test_tau_kernel_matches_monte_carlo(name, one_thread):
    """τ ΣK_τ against E[B²(Σ, C(A* + Δ))] − B²(Σ, C(A*)) over R antithetic pairs ±Δ of Gaussian perturbations
    with the per-level SGD variances (entries independent), at small τ: within 3 s.e. and 5%."""
    from gsm.samplers.diffusers_scheduler import Diffusers
    lam = torch.tensor([0.5, 1.0, 1.5], dtype=F64)
    s = Diffusers(scheduler=name, steps=6)
    al, st = s.noise_levels()
    tau, R = 0.02, 20000
    pred = linear_prediction(s.law(lam), DSM(), lam, al, st, tau=tau)
    Astar = (1 / (al.view(-1, 1) ** 2 * lam + st.view(-1, 1) ** 2)).diag_embed()
    V = stationary_sgd_variance(al, st, lam, tau)
    gen = torch.Generator().manual_seed(7)
    delta = V.sqrt() * torch.randn(R, *V.shape, generator=gen, dtype=F64)
    B2 = lambda A: bures_wasserstein2(torch.diag(lam), s.covariance(A))
    w = 0.5 * (B2(Astar + delta) + B2(Astar - delta)) - pred["discretization"]   # antithetic: odd orders cancel
    m, se = float(w.mean()), float(w.std() / math.sqrt(R))
    assert abs(m - pred["optimization"]) < 3 * se and abs(m / pred["optimization"] - 1) < 0.05, (m, se, pred["optimization"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "DDPMScheduler"])
def test_plugin_score_within_3se(name, tmp_path, compose_cfg, one_thread):
    """train.solver=exact (plug-in scores at every queried level): w2_exact within 3 s.e. of bias + 1/N."""
    from gsm.pipeline.run import run
    cfg = compose_cfg("sampler=diffusers", f"sampler.scheduler={name}", "sampler.steps=10", "train.solver=exact",
                      "data.dim=6", "data.n=120", "replicates=300", "sampler.particles=200", "progress=false")
    res = run(cfg, tmp_path)
    w, p = res["w2_exact"], res["w2_predicted"]
    assert abs(w["mean"] - p) < 3 * w["stderr"], (w, p, res["prediction_terms"])


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [
    ("sampler=diffusers", "sampler.scheduler=DPMSolverMultistepScheduler", "sampler.steps=10",
     "+sampler.config.timestep_spacing=trailing", "train.steps=3000"),
    ("sampler=diffusers", "sampler.scheduler=EulerAncestralDiscreteScheduler", "sampler.steps=10",
     "+sampler.config.timestep_spacing=trailing", "train.steps=3000"),
    ("sampler=edm", "sampler.steps=4", "sampler.sigma_min=0.5", "sampler.sigma_max=5", "sampler.score_levels=vp",
     "train.steps=1500"),
])
def test_sgd_trained_matches_prediction(sampler, tmp_path, compose_cfg, one_thread):
    """DSM-SGD at every queried level: w2_exact within 3 s.e. of bias + 1/N + finite-budget mean offset + τ.
    Regime as gsm's DDPM SGD test: near-isotropic λ (a small bias keeps the W2² fluctuations small), b = 32,
    τ = 0.1, N = 2·10⁴ (1/N term ≪ the SGD parts). Diffusers: trailing grid, 10 steps, 2.5 relaxation times of
    the slowest level (s² ≈ 0.1): the SGD mean offset (and for DPMSolver the τ part) is ≥ 5 s.e. (−0.0023 and
    +0.0024 ± 0.0002 for DPMSolver, −0.0087 and +0.0005 ± 0.0008 for EulerAncestral).
    EDM (VP levels, σ ∈ [0.5, 5]): ≥ 5 relaxation times, the τ part dominates."""
    from gsm.pipeline.run import run
    cfg = compose_cfg(*sampler, "sampler.particles=10", "data=custom", "data.dim=4",
                      "data.spectrum.eigenvalues=[0.8,0.9,1.1,1.25]", "data.n=20000", "replicates=256",
                      "train.tau=0.1", "train.batch_size=32", "progress=false")
    res = run(cfg, tmp_path)
    terms, w = res["prediction_terms"], res["w2_exact"]
    print(w, res["w2_predicted"], terms)
    tau_part = terms["optimization"] - terms["sgd_mean_offset"]
    sgd_part = max(abs(tau_part), abs(terms["sgd_mean_offset"]))
    assert res["unstable_replicates"] == 0 and sgd_part > 5 * w["stderr"] and terms["generalization"] < 0.2 * sgd_part
    assert abs(w["mean"] - res["w2_predicted"]) < 3 * w["stderr"], (w, terms)


def test_schedulers_report_ranking_with_ties(tmp_path):
    """The study's ranking table: Kendall τ over untied pairs (equal laws, e.g. DDIM = Euler, are ties)."""
    from gsm.cli.schedulers_report import kendall_tau, markdown, results_by_cell
    assert kendall_tau({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 1.0, "b": 2.5, "c": 2.0}) == pytest.approx(1 / 3)
    assert kendall_tau({"a": 1.0, "b": 1.0, "c": 3.0}, {"a": 2.0, "b": 1.0, "c": 3.0}) == 1.0   # (a, b) tied
    rows = [{"status": "ok", "score": sc, "sampler.nfe": "10", "sampler.scheduler": name, "w2_exact_mean": v,
             "w2_exact_stderr": 0.01, "w2_predicted": v} for sc, vals in (("oracle", (1, 2)), ("plugin", (2, 1)))
            for name, v in zip(("A", "B"), vals)]
    md = markdown(*results_by_cell(rows))
    assert "| 10 | A | B |" in md and "-1.00" in md


@pytest.mark.slow
@pytest.mark.parametrize("name, extra", [("DDPMScheduler", {}), ("EulerAncestralDiscreteScheduler", {}),
                                         ("DDIMScheduler", {"step_kwargs": {"eta": 0.7}})])
def test_stepwise_recursion_equals_full_push(name, extra, one_thread):
    """History-free stochastic schedulers: the per-step recursion C ← F C Fᵀ + G Gᵀ (law, 1/N and τ terms with
    a finite budget) equals pushing every noise source through the whole loop (EulerAncestral casts the sample
    to float32 inside step: 1e-5 relative)."""
    from gsm.samplers.diffusers_scheduler import Diffusers
    s = Diffusers(scheduler=name, steps=12, **extra)
    assert s.stepwise is not None
    lam = torch.tensor([0.3, 0.7, 1.0, 2.0], dtype=F64)
    Sigma = (lambda U: (U * lam) @ U.T)(random_basis(4, 6))
    A = torch.cat([perturbed_scores(s, Sigma, seed) for seed in (7, 8)])
    C = exact_law(s.push, A, s.J, s.init_var)
    rel = 1e-5 if name.startswith("Euler") else 1e-12
    assert (exact_law(s.push, A, s.J, s.init_var, stepwise=s.stepwise) - C).abs().max() < rel * C.abs().max()
    al, st = s.noise_levels()
    kw = dict(n=50, tau=0.05, batch_size=4, budget=SGDBudget(300, 0.05, 4))
    p, q = (linear_prediction(PushLaw(s.push, s.J, s.init_var, sw), DSM(), lam, al, st, **kw)
            for sw in (None, s.stepwise))
    for k in ("discretization", "generalization", "sgd_mean_offset", "optimization"):
        assert abs(p[k] - q[k]) <= rel * abs(p[k]) + 1e-15, (k, p[k], q[k])
