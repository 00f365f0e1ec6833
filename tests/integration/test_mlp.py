"""Neural score models: MLPScore, user models by `_target_`, train_score_net, Gaussian-fit W2."""
import math

import pytest
import torch
from torch import nn

from conftest import cuda
from gsm.pipeline.run import run
from gsm.theory.bures import bures_wasserstein2
from gsm.scores.nets import MLPScore, build_score_model
from gsm.theory.bures import escaped_fraction, gaussian_fit_w2
from gsm.training.dsm import train_score_net

TINY = ["replicates=2", "data.dim=2", "data.n=50", "train.steps=50", "train.batch_size=8", "sampler.steps=10",
        "sampler.particles=100", "progress=false"]


class TinyScore(nn.Module):
    """A user score model (one instance): a one-hidden-layer net fed with y and log s_t."""

    def __init__(self, dim, noise_stds, hidden=16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, dim))
        self.register_buffer("log_s", torch.as_tensor(noise_stds, dtype=torch.float32).log())

    def forward(self, y, t):
        log_s = self.log_s[t].expand(y.shape[0], 1)
        return -self.net(torch.cat([y, log_s], -1)) / log_s.exp()


class RepelScore(nn.Module):
    """A user score that is right near the data and wrong far from it: −y inside radius r, +y beyond, so a
    chain that wanders out keeps going (the failure behind the MLP's outlier replicates)."""

    def __init__(self, dim, noise_stds, radius=2.0):
        super().__init__()
        self.radius = radius
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, y, t):
        return torch.where(y.norm(dim=-1, keepdim=True) < self.radius, -y, y) * self.scale


def test_linear_skip_alone_is_the_linear_score_and_its_dsm_gradient():
    """depth 0 + skip: s(y) = −A y, and autograd on the DSM loss gives the closed form of
    gsm.training.dsm, ∇_A = (1/b) Σ (s²A y − s z) yᵀ (convention (L))."""
    torch.manual_seed(0)
    R, b, d, s = 3, 5, 4, 0.7
    m = MLPScore(d, R, 1, torch.tensor([s]), depth=0, skip=True).double()
    with torch.no_grad():
        m.A.copy_(torch.randn(R, 1, d, d))
    x, z = torch.randn(R, b, d, dtype=torch.float64), torch.randn(R, b, d, dtype=torch.float64)
    y = x + s * z
    assert torch.allclose(m(y, 0), -y @ m.A[:, 0].transpose(-1, -2))
    loss = 0.5 * ((s * m(y, 0) + z) ** 2).sum(-1).mean(-1)
    loss.sum().backward()
    u = s ** 2 * y @ m.A[:, 0].detach().transpose(-1, -2) - s * z
    assert torch.allclose(m.A.grad[:, 0], u.transpose(-1, -2) @ y / b)


def test_replicates_are_independent():
    """Replicate 1's data never reaches replicate 0's gradient; a diverged replicate stops alone."""
    torch.manual_seed(0)
    R, d = 2, 3
    stds = torch.tensor([1.0, 0.5, 0.1])
    m = MLPScore(d, R, 3, stds, width=16, skip=True, embedding="learned").double()
    y = torch.randn(R, 7, d, dtype=torch.float64)
    lv = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    m(y, lv).pow(2).sum().backward()
    g0 = [p.grad[0].clone() for p in m.parameters()]
    m.zero_grad()
    y[1] += 10.0
    m(y, lv).pow(2).sum().backward()
    assert all(torch.equal(a, p.grad[0]) for a, p in zip(g0, m.parameters()))
    # per-sample levels give the same score as one level at a time
    for level in range(3):
        assert torch.allclose(m(y, lv)[:, lv == level], m(y[:, lv == level], level))
    # a NaN in replicate 1 marks it diverged and leaves replicate 0 training
    with torch.no_grad():
        m.layers[0].weight[1] = float("nan")
    x = torch.randn(R, 40, d, dtype=torch.float64)
    out = train_score_net(m, x, alphas=torch.ones(3), stds=stds, optimizer=torch.optim.SGD(m.parameters(), 1e-2),
                          batch_size=4, steps=20, log_every=5, generator=torch.Generator().manual_seed(0))
    assert out["diverged_at"].tolist() == [-1, 5]
    assert all(torch.isfinite(p[0]).all() for p in m.parameters())


def test_gaussian_fit_w2_bias_is_the_particle_bias():
    """E[|m̂|² + B²(Σ, Ĉ)] − bias = |m|² + B²(Σ, C) for Gaussian particles, C not commuting with Σ:
    Monte Carlo over 4000 sets of M = 200 particles, within 4 s.e.; the raw estimator is off by > 10 s.e.
    (At M = 50 the O(1/M²) remainder shows: ≈ +2.5 s.e. at 20 000 sets.)"""
    g = torch.Generator().manual_seed(1)
    d, M, n = 3, 200, 4000
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    Sigma = Q @ torch.diag(torch.tensor([2.0, 1.0, 0.3], dtype=torch.float64)) @ Q.T
    C = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.8, 0.2], [0.0, 0.2, 0.5]], dtype=torch.float64)
    m = torch.tensor([0.1, 0.0, -0.1], dtype=torch.float64)
    x = m + torch.randn(n, M, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(C).T
    w2, bias = gaussian_fit_w2(Sigma, x)
    exact = float((m ** 2).sum() + bures_wasserstein2(Sigma, C))
    est = w2 - bias
    se = float(est.std() / math.sqrt(n))
    assert abs(float(est.mean()) - exact) < 4 * se
    assert float(w2.mean()) - exact > 10 * se


def test_escaped_fraction_counts_particles_beyond_the_target_tail():
    """N(0, Σ) particles: none beyond the 1e-9 tail (2·10⁻⁴ expected in 2·10⁵), and 1 % beyond the 1e-2 tail
    within 4 s.e.; a replicate with 2 % of its particles 30 standard deviations out along Σ's top axis: those."""
    g = torch.Generator().manual_seed(0)
    d, R, M = 3, 4, 50000
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    Sigma = Q @ torch.diag(torch.tensor([2.0, 1.0, 0.3], dtype=torch.float64)) @ Q.T
    x = torch.randn(R, M, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(Sigma).T
    clean = escaped_fraction(Sigma, x, tail=1e-2)
    se = math.sqrt(1e-2 * (1 - 1e-2) / (R * M))
    assert abs(float(clean.mean()) - 1e-2) < 4 * se
    x[1, :1000] = 30 * math.sqrt(2.0) * Q[:, 0]                # xᵀΣ⁻¹x = 900
    assert escaped_fraction(Sigma, x).tolist() == [0.0, 0.02, 0.0, 0.0]


def test_particles_escaping_a_user_score_are_flagged(compose_cfg, tmp_path):
    """A score that pushes chains out beyond radius 2: the run finishes (the particles stay finite), and
    results.json reports the escaped fraction per replicate with a warning."""
    res = run(compose_cfg(*TINY, "model=custom", f"model._target_={__name__}.RepelScore", "train.steps=0",
                          "sampler.steps=300"), tmp_path)
    assert res["status"] == "ok" and min(res["escaped_fraction_per_replicate"]) > 0.1
    assert any("tail of the exact-score sampler's law" in w for w in res["warnings"])
    assert res["regime"]["ok"] is False and "beyond the 1e-09 tail" in res["regime"]["reasons"][0]


def test_the_exact_score_langevin_law_is_the_escape_reference():
    """ULA at σ = 0.5 with the exact score samples N(0, C*), C* = m²/(m − γ/2) wider than Σ (m = λ + σ²): its
    own particles lie beyond Σ's 1e-9 tail at a rate P(Σ_i (c_i/λ_i) χ²_1 > q) ≫ 1e-9, so N(0, Σ) cannot be
    the reference; beyond C*'s own tail there are none (2·10⁵ particles, 2·10⁻⁴ expected)."""
    from gsm.samplers.langevin import Langevin
    g = torch.Generator().manual_seed(0)
    lam = torch.tensor([1.0, 0.5, 0.25, 0.125, 0.1, 0.1, 0.1, 0.1], dtype=torch.float64)
    Sigma = torch.diag(lam)
    C = Langevin(gamma=0.05, particles=2).covariance_stationary(torch.diag(1 / (lam + 0.25)).view(1, 1, 8, 8))[0]
    x = torch.randn(4, 50000, 8, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(C).T
    assert float(escaped_fraction(C, x).max()) == 0.0
    assert float(escaped_fraction(Sigma, x).mean()) > 1e-4


@pytest.mark.parametrize("overrides", [
    [], ["model.skip=true", "optim=adam"], ["model.depth=0", "model.skip=true"], ["model.activation=tanh"],
    ["sampler=ddpm", "sampler.steps=5"], ["sampler=ddpm", "sampler.steps=5", "model.embedding=learned"],
    ["sampler=ddim", "sampler.steps=5", "model.skip=true"], ["dtype=float64"],
], ids=lambda o: ",".join(o) or "default")
def test_mlp_pipeline_runs(compose_cfg, tmp_path, overrides):
    res = run(compose_cfg(*TINY, "model=mlp", "model.width=8", *overrides), tmp_path)
    assert res["status"] == "ok" and res["w2_exact"] is None
    for k in ("w2_empirical", "w2_empirical_debiased", "particle_bias"):
        assert math.isfinite(res[k]["mean"])
    assert res["w2_empirical"]["mean"] >= 0 and math.isfinite(res["w2_predicted_linear"])
    assert "lower bound" in res["w2_metric"]


@pytest.mark.parametrize("sampler", ["langevin", pytest.param("ddpm", marks=pytest.mark.slow)])
def test_user_model_by_target(compose_cfg, tmp_path, sampler):
    """model=custom model._target_=<a user class>: trains and samples under Langevin and DDPM, and
    learns: its W2² ends below half that of the untrained model and half that of a point mass at 0
    (tr Σ = 1.5). (Seeds 0–4 at this budget: DDPM 0.04–0.24, the untrained ≈ 5·10⁴.)"""
    def cfg(steps):
        return compose_cfg(*TINY, "model=custom", f"model._target_={__name__}.TinyScore", "+model.hidden=8",
                           f"sampler={sampler}", f"train.steps={steps}", "train.batch_size=64", "optim=adam",
                           "optim.lr=1e-2", "sampler.particles=400", *(["sampler.steps=20"] if sampler == "ddpm" else []))
    res, untrained = run(cfg(1000), tmp_path / "trained"), run(cfg(0), tmp_path / "untrained")
    assert res["status"] == "ok" and res["w2_exact"] is None
    assert res["w2_empirical"]["mean"] < 0.5 * min(untrained["w2_empirical"]["mean"], 1.5)


def test_user_model_errors(compose_cfg, tmp_path):
    with pytest.raises(ValueError, match="takes no argument init"):          # model=linear's keys
        run(compose_cfg(*TINY, f"model._target_={__name__}.TinyScore"), tmp_path)
    with pytest.raises(ValueError, match="train.solver=exact needs a linear model"):
        run(compose_cfg(*TINY, "model=mlp", "train.solver=exact"), tmp_path)


@pytest.mark.parametrize("kw,msg", [({"activation": "elu"}, "model.activation"), ({"depth": -1}, "model.depth"),
                                    ({"embedding": "fourier"}, "model.embedding"), ({"embed_dim": 3}, "embed_dim"),
                                    ({"depth": 0}, "model.depth must be >= 1"), ({"width": 0}, "model.width")])
def test_mlp_bad_input(kw, msg):
    with pytest.raises(ValueError, match=msg):
        MLPScore(2, 1, 1, **kw)


def test_build_passes_only_named_arguments(compose_cfg):
    cfg = compose_cfg("model=custom", f"model._target_={__name__}.TinyScore")
    model = build_score_model(cfg.model, dim=3, replicates=2, alphas=torch.ones(2), stds=torch.tensor([1.0, 0.5]))
    assert len(model.models) == 2 and model(torch.randn(2, 5, 3), 1).shape == (2, 5, 3)


def test_mlp_within_factor_of_linear_on_same_budget(compose_cfg, tmp_path):
    """Same seed ⇒ same data: the MLP (Adam) reaches a debiased w2_empirical within FACTOR = 3 of the
    linear score's exact W2² (DSM-SGD), on the same steps and batch; the linear-score prediction and
    the training loss are in TensorBoard."""
    tbparse = pytest.importorskip("tbparse")
    common = ["replicates=4", "data.dim=2", "data.n=400", "train.sigma=0.3", "sampler.gamma=0.02",
              "sampler.steps=200", "sampler.particles=2000", "train.steps=1000", "train.batch_size=128",
              "train.tau=0.1", "train.log_every=100", "progress=false"]
    lin = run(compose_cfg(*common), tmp_path / "linear")
    mlp = run(compose_cfg(*common, "model=mlp", "model.width=32", "optim=adam"), tmp_path / "mlp")
    assert mlp["w2_empirical_debiased"]["mean"] <= 3 * lin["w2_exact"]["mean"]
    assert mlp["w2_predicted_linear"] == pytest.approx(lin["w2_predicted"], rel=1e-12)
    reader = tbparse.SummaryReader(str(tmp_path / "mlp" / "tb"))
    tags = set(reader.scalars.tag) | set(reader.tensors.tag if len(reader.tensors) else [])
    assert {"train/dsm_loss", "eval/w2_empirical_debiased", "eval/w2_predicted_linear"} <= tags


@cuda
def test_mlp_on_cuda(compose_cfg, tmp_path):
    """The MLP trains and samples on the GPU (Langevin and DDPM), and its score matches the CPU's."""
    for sampler in ("langevin", "ddpm"):
        res = run(compose_cfg(*TINY, "model=mlp", "device=cuda", f"sampler={sampler}", "sampler.steps=5"),
                  tmp_path / sampler)
        assert res["status"] == "ok" and math.isfinite(res["w2_empirical"]["mean"])
    m = MLPScore(3, 2, 4, torch.tensor([1.0, 0.5, 0.2, 0.1]), width=16, skip=True).double()
    for p in m.parameters():
        nn.init.normal_(p)
    y, lv = torch.randn(2, 9, 3, dtype=torch.float64), torch.randint(4, (9,))
    assert torch.allclose(m.cuda()(y.cuda(), lv.cuda()).cpu(), m.cpu()(y, lv))
