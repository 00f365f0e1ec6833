"""diffusers' flow-matching schedulers (FlowMatchEulerDiscrete, FlowMatchHeunDiscrete) on gsm's velocity
(sampler=diffusers objective=cfm, issue 23), the refusals, sampler=flow's nfe, and the flow_vs_diffusion report.

The references are derived here. diffusers' convention: σ from 1 (noise) to 0 (data), x_σ = (1 − σ)x₁ + σx₀,
the model predicts dx/dσ = x₀ − x₁; gsm's time is t = 1 − σ and its velocity dx/dt. Per eigenvalue λ of Σ the
exact velocity is β(t)x, β(t) = (tλ − (1 − t))/((1 − t)² + t²λ), so along the scheduler's own grid σ_0 > … > σ_K
(read from the scheduler) Euler is x ← x + (σ_k − σ_{k+1})β(1 − σ_k)x and Heun (Karras' 2nd order, as diffusers
runs it) averages the slopes at both ends, except for the last step to σ = 0, an Euler step. The output is
N(0, U diag(g²) Uᵀ), g = x_K/x_0, and W2² to N(0, Σ) is Σ(√λ − |g|)² (both laws diagonal in U).
"""
import math

import pytest
import torch

from gsm.theory.bures import second_moment

F64 = torch.float64
EULER, HEUN = "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"


def beta(t, lam):
    return (t * lam - (1 - t)) / ((1 - t) ** 2 + t * t * lam)


def grid(sched) -> list[float]:
    """The distinct σ of the scheduler's own grid, in order (Heun repeats the interior ones), ending at 0."""
    sig = [float(s) for s in sched.sigmas]
    return [s for i, s in enumerate(sig) if i == 0 or s != sig[i - 1]]


def gain(scheme: str, sigmas: list[float], lam: torch.Tensor) -> torch.Tensor:
    """x_K/x_0 per eigenvalue: the Euler or Heun recursion of the exact velocity on the σ grid (module doc)."""
    x = torch.ones_like(lam)
    for s0, s1 in zip(sigmas[:-1], sigmas[1:]):
        h, b0 = s0 - s1, beta(1 - s0, lam)
        if scheme == "euler" or s1 == 0:
            x = x + h * b0 * x
        else:
            x = x + h / 2 * (b0 * x + beta(1 - s1, lam) * (x + h * b0 * x))
    return x


def w2_commuting(lam, g):
    return float(((lam.sqrt() - g.abs()) ** 2).sum())


@pytest.mark.parametrize("name, scheme, shift", [(EULER, "euler", 3.0), (HEUN, "heun", 3.0)])
def test_oracle_law_equals_recursion_fast(name, scheme, shift, one_thread):
    """The fast guard (no pipeline): the sampler's exact law under the CFM minimiser on Σ (diagonal) is
    diag(g²) of the recursion, to 1e-12 relative; the levels are α = 1 − σ, s = σ at the grid's σ."""
    pytest.importorskip("diffusers")
    from gsm.samplers.diffusers_scheduler import Diffusers
    from gsm.training.flow_matching import CFM
    lam = torch.tensor([0.05, 0.3, 1.0, 2.5], dtype=F64)
    s = Diffusers(scheduler=name, steps=6, shift=shift)
    sig = grid(s.template)
    alphas, stds = s.noise_levels()
    assert torch.equal(stds, torch.tensor(sig[:-1], dtype=F64)) and torch.equal(alphas, 1 - stds)
    C = s.covariance(CFM().score_function(torch.diag(lam), alphas, stds).unsqueeze(0))[0]
    assert torch.allclose(C, torch.diag(gain(scheme, sig, lam) ** 2), rtol=1e-12, atol=1e-15)
    assert s.reads == "velocity" and s.results_extra()["nfe"] == (6 if scheme == "euler" else 11)


@pytest.mark.slow
@pytest.mark.parametrize("name, scheme, shift", [(EULER, "euler", 1.0), (EULER, "euler", 3.0),
                                                 (HEUN, "heun", 1.0), (HEUN, "heun", 3.0)])
def test_acceptance_oracle_w2_equals_recursion(name, scheme, shift, tmp_path, compose_cfg, one_thread):
    """`gsm sampler=diffusers sampler.scheduler=<FlowMatch…> sampler.shift=s objective=cfm model=oracle`:
    w2_exact = Σ(√λ − |g|)² of the recursion on the scheduler's own σ grid, to 1e-8 relative (d = 8, random U)."""
    from hydra.utils import instantiate

    from gsm.pipeline.run import run
    from gsm.samplers.diffusers_scheduler import make_scheduler
    K = 7
    cfg = compose_cfg("sampler=diffusers", f"sampler.scheduler={name}", f"sampler.shift={shift}", "objective=cfm",
                      "model=oracle", f"sampler.steps={K}", "data.dim=8", "replicates=2", "sampler.particles=100",
                      "progress=false")
    res = run(cfg, tmp_path)
    lam = instantiate(cfg.data.spectrum).to(F64)
    w2 = w2_commuting(lam, gain(scheme, grid(make_scheduler(name, {"shift": shift}, K)), lam))
    assert res["status"] == "ok" and res["law_method"] == "deterministic"
    assert res["w2_exact"]["mean"] == pytest.approx(w2, rel=1e-8) and res["w2_predicted"] == pytest.approx(w2, rel=1e-8)


def shifted(s, sigma):
    return s * sigma / (1 + (s - 1) * sigma)


@pytest.mark.slow
@pytest.mark.parametrize("kw, grid_of", [
    # static shift s: diffusers shifts σ_min = 1/1000 in __init__ and the whole linspace again in set_timesteps
    (dict(shift=3.0), lambda K: shifted(3.0, torch.linspace(1, shifted(3.0, 1e-3), K, dtype=F64))),
    # dynamic (exponential) shifting with μ: σ ↦ e^μ/(e^μ + 1/σ − 1), the shift e^μ, on linspace(1, 1/1000, K)
    (dict(config={"use_dynamic_shifting": True}, mu=0.8),
     lambda K: shifted(math.exp(0.8), torch.linspace(1, 1e-3, K, dtype=F64))),
])
def test_shifted_grids_and_their_laws(kw, grid_of, one_thread):
    """FlowMatchEuler's σ grid with a static shift and with dynamic shifting, against the formulas above (float32
    rounding: 1e-6), and the law on that grid against the Euler recursion (1e-12)."""
    from gsm.samplers.diffusers_scheduler import Diffusers
    from gsm.training.flow_matching import CFM
    lam, K = torch.tensor([0.2, 1.0, 3.0], dtype=F64), 8
    s = Diffusers(scheduler=EULER, steps=K, **kw)
    sig = grid(s.template)
    assert torch.allclose(torch.tensor(sig[:-1], dtype=F64), grid_of(K), rtol=1e-6) and sig[-1] == 0
    C = s.covariance(CFM().score_function(torch.diag(lam), *s.noise_levels()).unsqueeze(0))[0]
    assert torch.allclose(C, torch.diag(gain("euler", sig, lam) ** 2), rtol=1e-12, atol=1e-15)


@pytest.mark.slow
@pytest.mark.parametrize("name", [EULER, HEUN])
def test_exact_law_matches_particles(name, one_thread):
    """Non-symmetric, non-commuting velocity matrices: the law read off basis vectors against M = 10⁵ particles
    pushed through the same loop, each entry within 4.5 s.e. (√((C_iiC_jj + C_ij²)/M))."""
    from gsm.samplers.diffusers_scheduler import Diffusers
    d, M = 3, 100_000
    s = Diffusers(scheduler=name, steps=5, shift=2.0)
    gen = torch.Generator().manual_seed(0)
    L = s.noise_levels()[0].numel()
    B = (torch.eye(d, dtype=F64) + 0.4 * torch.randn(1, L, d, d, generator=gen, dtype=F64))
    C = s.covariance(B)[0]
    Chat = second_moment(s.push(B, torch.randn(1, M, d, generator=gen, dtype=F64)))[0]
    se = ((torch.diagonal(C)[:, None] * torch.diagonal(C)[None] + C ** 2) / M).sqrt()
    assert ((Chat - C).abs() / se).max() < 4.5, (C, Chat)


@pytest.mark.slow
@pytest.mark.parametrize("name", [EULER, HEUN])
def test_plugin_velocity_within_3se(name, tmp_path, compose_cfg, one_thread):
    """train.solver=exact (the CFM least-squares minimiser on Σ̂ at every queried σ), N = 10d, d = 4, R = 1000:
    the 1/N term is resolved (> 4 s.e.) and w2_exact agrees with bias + 1/N within 3 s.e."""
    from gsm.pipeline.run import run
    cfg = compose_cfg("sampler=diffusers", f"sampler.scheduler={name}", "sampler.shift=3", "sampler.steps=5",
                      "objective=cfm", "train.solver=exact", "data=custom", "data.n=40", "replicates=1000",
                      "sampler.particles=50", "progress=false")
    res = run(cfg, tmp_path)
    w, p = res["w2_exact"], res["w2_predicted"]
    assert res["prediction_terms"]["generalization"] > 4 * w["stderr"], (w, res["prediction_terms"])
    assert abs(w["mean"] - p) < 3 * w["stderr"], (w, p, res["prediction_terms"])


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", [
    (["sampler.scheduler=FlowMatchEulerDiscreteScheduler", "model=oracle"],
     "objective must learn the velocity that sampler.scheduler=FlowMatchEulerDiscreteScheduler reads (objective=cfm), "
     "got objective dsm"),
    (["sampler.scheduler=DDIMScheduler", "objective=cfm", "model=oracle"],
     "objective must learn the score that sampler.scheduler=DDIMScheduler reads (objective=dsm), got objective cfm"),
    (["sampler.scheduler=DDIMScheduler", "sampler.shift=3", "model=oracle"], "sampler.shift must be null for DDIM"),
    (["sampler.scheduler=FlowMatchEulerDiscreteScheduler", "objective=cfm", "sampler.shift=0", "model=oracle"],
     "sampler.shift must be > 0, got 0"),
    (["sampler.scheduler=FlowMatchEulerDiscreteScheduler", "objective=cfm", "sampler.mu=0.5", "model=oracle"],
     "sampler.mu must be null when sampler.config.use_dynamic_shifting is false, got 0.5"),
    (["sampler.scheduler=FlowMatchEulerDiscreteScheduler", "objective=cfm", "model=oracle",
      "+sampler.config.use_dynamic_shifting=true"],
     "sampler.mu must be a number when sampler.config.use_dynamic_shifting is true, got null"),
    (["sampler.scheduler=FlowMatchEulerDiscreteScheduler", "objective=cfm", "sampler.shift=2", "model=oracle",
      "+sampler.config.shift=3"], "sampler.config.shift must be unset when sampler.shift is set"),
])
def test_mismatches_are_refused_in_one_line(compose_cfg, overrides, message):
    """Score schedulers with objective=cfm, FlowMatch schedulers with a score objective, and bad shift / μ:
    one line naming the parameter, before any work."""
    from gsm.pipeline.validate import ConfigError, validate_config
    with pytest.raises(ConfigError) as info:
        validate_config(compose_cfg("sampler=diffusers", *overrides))
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)


def test_flow_steps_from_nfe():
    """sampler=flow's nfe: K = nfe // evaluations per step (euler 1, heun 2, rk4 4); steps and nfe exclusive."""
    from gsm.samplers.flow import Flow
    assert [Flow(scheme=s, steps=None, nfe=n).K for s, n in (("euler", 5), ("heun", 5), ("rk4", 50))] == [5, 2, 12]
    assert Flow(scheme="heun", steps=None, nfe=5).evaluations == 4
    with pytest.raises(ValueError, match="sampler.steps must be null when sampler.nfe is set"):
        Flow(scheme="euler", steps=10, nfe=5)
    with pytest.raises(ValueError, match=r"sampler.nfe must be an integer >= 2 \(scheme=heun\), got 1"):
        Flow(scheme="heun", steps=None, nfe=1)


def test_flow_vs_diffusion_report(tmp_path):
    """gsm-report's flow_vs_diffusion table: method × NFE per field (exact, plug-in, SGD), the best method and
    the Kendall τ of each learned field's ranking against the exact one per NFE, and the learned fields' z's."""
    from gsm.cli.flow_report import write_flow_report
    fields = (("oracle", (1, 2, 3), None), ("plugin", (2, 1, 3), 0.5), ("sgd", (1, 3, 2), -2.5))
    rows = [{"status": "ok", "score": sc, "sampler.nfe": "10", "method": name, "w2_exact_mean": v,
             "w2_exact_stderr": 0.01, "w2_predicted": v, "z_exact": z, "relaxation_times": 0.4}
            for sc, vals, z in fields for name, v in zip(("fm_euler", "ddim", "fm_heun"), vals)]
    paths = write_flow_report(tmp_path, rows)
    md = (tmp_path / "report_flow_vs_diffusion.md").read_text()
    assert [p.name for p in paths] == ["report_flow_vs_diffusion.png", "report_flow_vs_diffusion.md"]
    assert "| method | NFE 10 |" in md and "| fm_euler | 1 ± 0.01 (1) #1 |" in md and "### score = sgd" in md
    # pairs (euler, ddim, heun) against the exact order 1 < 2 < 3: plug-in 2 1 3 → τ = (−1 + 1 + 1)/3,
    # SGD 1 3 2 → τ = (1 + 1 − 1)/3
    assert "| 10 | fm_euler | ddim | fm_euler | +0.33 | +0.33 |" in md
    assert "score = plugin: 3 cells in [+0.50, +0.50], 3 within 3 s.e." in md
    assert "score = sgd (relaxation times): 3 cells in [-2.50, -2.50]" in md and "| ddim | -2.50 (0.4) |" in md
