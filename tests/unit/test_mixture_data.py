"""data=mixture (gsm.data.mixture): the exact score at every noise level against autograd of a log-density
written here (torch.distributions), the samples' moments, the posterior assignment, and bad input."""
import math

import pytest
import torch
from torch import distributions as D

from gsm.data.mixture import GaussianMixture, mixture_family, random_means, two_clusters
from gsm.scores.mixture import MixtureScore

LEVELS = [(1.0, 0.0), (1.0, 0.3), (0.8, 0.6), (0.05, 0.999)]     # (α, s): data, Langevin, mid, near pure noise


def reference_log_density(w, mu, cov, alpha, s):
    """log p of y = αx + sz, x ~ Σ_k w_k N(μ_k, Σ_k): the mixture of N(αμ_k, α²Σ_k + s²I), by torch.distributions."""
    d = mu.shape[-1]
    comps = D.MultivariateNormal(alpha * mu, covariance_matrix=alpha ** 2 * cov + s ** 2 * torch.eye(d, dtype=cov.dtype))
    return D.MixtureSameFamily(D.Categorical(probs=w), comps).log_prob


def general_mixture(d=3, K=3, seed=0):
    """Unequal weights, spread means, a different non-isotropic Σ_k per component."""
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)[:K]
    mu = 2 * torch.randn(K, d, generator=g, dtype=torch.float64)
    mu = mu - (w[:, None] * mu).sum(0)
    B = torch.randn(K, d, d, generator=g, dtype=torch.float64)
    return GaussianMixture(w, mu, B @ B.transpose(-1, -2) / d + 0.1 * torch.eye(d, dtype=torch.float64))


@pytest.mark.parametrize("alpha,s", LEVELS)
def test_exact_score_is_the_gradient_of_the_noised_log_density(alpha, s):
    mix = general_mixture()
    y = 3 * torch.randn(64, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    logp = reference_log_density(mix.weights, mix.means, mix.covariances, alpha, s)
    y_ = y.clone().requires_grad_(True)
    grad, = torch.autograd.grad(logp(y_).sum(), y_)
    assert torch.allclose(mix.log_density(y, alpha, s), logp(y), rtol=1e-10, atol=1e-10)
    assert torch.allclose(mix.score(y, alpha, s), grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.7, 1.0])
def test_velocity_is_the_posterior_mean_of_x1_minus_x0(t):
    """w(y) = E[x₁ − x₀ | t x₁ + (1 − t) x₀ = y] on the linear path, t = 0 and t = 1 included. Reference: Gaussian
    conditioning per component, (x₁ − x₀, y) | k jointly Gaussian with Cov(x₁ − x₀, y) = tΣ_k − (1 − t)I and
    Var(y) = t²Σ_k + (1 − t)²I, weighted by the posterior of k (torch.distributions); and, for 0 < t, Tweedie:
    E[x₁|y] = (y + (1 − t)²∇log p(y))/t, E[x₀|y] = −(1 − t)∇log p(y), ∇log p by autograd."""
    mix, (a, b) = general_mixture(), (t, 1.0 - t)
    y = 2 * torch.randn(32, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    ref = torch.zeros_like(y)
    logp = reference_log_density(mix.weights, mix.means, mix.covariances, a, b)
    comps = [D.MultivariateNormal(a * m, covariance_matrix=a ** 2 * c + b ** 2 * eye)
              for m, c in zip(mix.means, mix.covariances)]
    post = torch.softmax(torch.stack([w.log() + c.log_prob(y) for w, c in zip(mix.weights, comps)], -1), -1)
    for k, (m, c) in enumerate(zip(mix.means, mix.covariances)):
        gain = (a * c - b * eye) @ torch.linalg.inv(a ** 2 * c + b ** 2 * eye)
        ref += post[:, k:k + 1] * (m + (y - a * m) @ gain.T)
    assert torch.allclose(mix.velocity(y, a, b), ref, rtol=1e-9, atol=1e-10)
    if 0 < t:
        y_ = y.clone().requires_grad_(True)
        grad, = torch.autograd.grad(logp(y_).sum(), y_)
        assert torch.allclose(mix.velocity(y, a, b), (y + b ** 2 * grad) / a + b * grad, rtol=1e-8, atol=1e-9)


def test_one_component_velocity_is_the_linear_oracle():
    """A one-Gaussian mixture N(0, Σ): w(y) = (aΣ − bI)(a²Σ + b²I)⁻¹ y, the linear flow's exact velocity −B y
    (docs/flow.md); MixtureScore(predicts=velocity) reads it at the sampler's levels, in y's dtype."""
    B = torch.randn(3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cov = B @ B.T + 0.2 * torch.eye(3, dtype=torch.float64)
    mix = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64), cov[None])
    alphas, stds = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64), torch.tensor([1.0, 0.6, 0.0], dtype=torch.float64)
    model = MixtureScore(mix, alphas, stds, predicts="velocity")
    y = torch.randn(2, 7, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    for level, (a, b) in enumerate(zip(alphas.tolist(), stds.tolist())):
        gain = (a * cov - b * eye) @ torch.linalg.inv(a ** 2 * cov + b ** 2 * eye)
        assert torch.allclose(model(y, level), y @ gain.T, rtol=1e-10, atol=1e-12)
    assert model(y.float(), 1).dtype == torch.float32
    with pytest.raises(ValueError, match="predicts must be one of"):
        MixtureScore(mix, alphas, stds, predicts="noise")


def test_score_model_reads_the_sampler_levels_and_stays_finite_far_out():
    """MixtureScore(y, l) is the score at (α_l, s_l), in y's dtype; at |y| ~ 1e3 (responsibilities of
    e^{-10⁵}) the log-sum-exp keeps it finite and equal to the nearest component's score."""
    mix = two_clusters(4)
    alphas, stds = torch.tensor([0.9, 0.5], dtype=torch.float64), torch.tensor([0.4, 0.8], dtype=torch.float64)
    model = MixtureScore(mix, alphas, stds)
    y = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(3))
    assert model(y, 1).dtype == torch.float32
    assert torch.allclose(model(y.double(), 1), mix.score(y.double(), 0.5, 0.8))
    far = torch.full((1, 4), 1e3, dtype=torch.float64)
    v = 0.9 ** 2 * 0.25 + 0.4 ** 2
    assert torch.allclose(model(far, 0), -(far - 0.9 * mix.means[0]) / v, rtol=1e-12)


def test_samples_have_the_weights_and_the_surrogate_covariance():
    """n = 40000 draws: component shares within 4 s.e. of w, mean within 4 s.e. of 0, each entry of the
    second moment within 4 s.e. of Σ = Σ_k w_k (Σ_k + μ_k μ_kᵀ) (written here)."""
    mix = general_mixture()
    n = 40000
    x, k = mix.sample((n,), generator=torch.Generator().manual_seed(4), labels=True)
    share = torch.stack([(k == j).double().mean() for j in range(3)])
    assert ((share - mix.weights).abs() < 4 * (mix.weights * (1 - mix.weights) / n).sqrt()).all()
    assert (x.mean(0).abs() < 4 * x.std(0) / math.sqrt(n)).all()
    sigma = sum(mix.weights[j] * (mix.covariances[j] + torch.outer(mix.means[j], mix.means[j])) for j in range(3))
    outer = x[:, :, None] * x[:, None, :]
    assert ((outer.mean(0) - sigma).abs() < 4 * outer.std(0) / math.sqrt(n)).all()
    assert torch.allclose(mix.covariance, sigma)
    assert torch.allclose(mix.surrogate().covariance, sigma)


def test_families_have_their_geometry():
    """two_clusters: ‖μ_1 − μ_2‖ = Δσ_c, centred for unequal weights; random_means: K centred means from the seed."""
    mix = two_clusters(3, separation=4.0, component_std=0.5, weights=[0.25, 0.75])
    assert float((mix.means[0] - mix.means[1]).norm()) == pytest.approx(2.0)
    assert torch.allclose((mix.weights[:, None] * mix.means).sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-15)
    assert two_clusters(2, separation=0.0).is_gaussian and not mix.is_gaussian     # identical components
    r = random_means(5, components=6, seed=7)
    assert r.means.shape == (6, 5) and torch.equal(r.means, random_means(5, components=6, seed=7).means)
    assert torch.allclose(r.means.mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-14)


def test_mode_weights_of_exact_samples_are_the_weights():
    """R = 8 replicates of M = 2000 draws of a well-separated mixture: each share within 3 s.e. of w_k."""
    mix = mixture_family("random_means", dim=2, components=3, separation=8.0, weights=[0.2, 0.3, 0.5], seed=1)
    x = mix.sample((8, 2000), generator=torch.Generator().manual_seed(5))
    w = mix.mode_weights(x)
    se = w.std(0) / math.sqrt(8)
    assert ((w.mean(0) - mix.weights).abs() < 3 * se).all(), (w.mean(0), se)


def test_mode_weights_split_a_tie_between_identical_components():
    """At separation 0 the two components are one Gaussian: every point's posterior is (½, ½) exactly, so each
    point counts half for each (argmax alone gave [1, 0]). Apart, the tie rule changes nothing."""
    same = mixture_family("two_clusters", dim=3, separation=0.0)
    x = same.sample((2, 100), generator=torch.Generator().manual_seed(0))
    assert torch.equal(same.mode_weights(x), torch.full((2, 2), 0.5, dtype=torch.float64))
    apart = mixture_family("two_clusters", dim=3, separation=2.0)
    x = apart.sample((2, 100), generator=torch.Generator().manual_seed(0))
    argmax = torch.nn.functional.one_hot(apart.responsibilities(x).argmax(-1), 2).to(torch.float64).mean(-2)
    assert torch.equal(apart.mode_weights(x), argmax)


@pytest.mark.parametrize("kwargs,line", [
    (dict(components=0, family="random_means"), "data.components must be an integer >= 1, got 0"),
    (dict(components=3), "data.components must be 2 for data.family=two_clusters, got 3"),
    (dict(separation=-1.0), "data.separation must be >= 0, got -1.0"),
    (dict(component_std=0.0), "data.component_std must be > 0, got 0.0"),
    (dict(weights=[0.3, 0.3]), "data.weights must be null or data.components = 2 numbers >= 0 summing to 1, got [0.3, 0.3]"),
    (dict(weights=[1.5, -0.5]), "data.weights must be null or data.components = 2 numbers >= 0 summing to 1"),
    (dict(weights=[1.0]), "data.weights must be null or data.components = 2 numbers"),
    (dict(family="ring"), "data.family must be one of two_clusters | random_means, got ring"),
    (dict(dim=0), "data.dim must be an integer >= 1, got 0"),
])
def test_bad_input_is_one_line_naming_the_key(kwargs, line):
    args = dict(family="two_clusters", dim=2)
    with pytest.raises(ValueError) as e:
        mixture_family(**{**args, **kwargs})
    assert str(e.value).startswith(line) and "\n" not in str(e.value)


def test_empirical_score_is_the_gradient_of_the_smoothed_training_set():
    """EmpiricalScore at (α, s) against autograd of log (1/N) Σ_i N(y; α x_i, s²I), per replicate (written
    here with torch.distributions); its blocks (CHUNK_ENTRIES) do not change the result."""
    import gsm.scores.empirical as emp
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    alphas, stds = torch.tensor([0.9, 0.2], dtype=torch.float64), torch.tensor([0.5, 0.05], dtype=torch.float64)
    model = emp.EmpiricalScore(alphas, stds, replicates=2)
    model.fit(x)
    y = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    for level in range(2):
        a, s = float(alphas[level]), float(stds[level])
        for r in range(2):
            # point masses smoothed: the components N(α x_i, α²·0 + s²I)
            logp = reference_log_density(torch.full((7,), 1 / 7, dtype=torch.float64), x[r],
                                         torch.zeros(7, 3, 3, dtype=torch.float64), a, s)
            y_ = y[r].clone().requires_grad_(True)
            grad, = torch.autograd.grad(logp(y_).sum(), y_)
            assert torch.allclose(model(y, level)[r], grad, rtol=1e-8, atol=1e-8)
    old = emp.CHUNK_ENTRIES
    try:
        emp.CHUNK_ENTRIES = 14      # one y point per block
        blocked = model(y, 1)
    finally:
        emp.CHUNK_ENTRIES = old
    assert torch.allclose(blocked, model(y, 1))


def test_empirical_velocity_is_the_posterior_mean_of_x1_minus_x0():
    """predicts=velocity: w(y) = E[x₁ − x₀ | αx₁ + s x₀ = y] over the training set. One training point p: the
    posterior is a point mass, x₁ = p and x₀ = (y − αp)/s. Several: Tweedie against autograd of the smoothed
    log-density (as above), E[x₁|y] = (y + s²∇log p̂)/α, E[x₀|y] = −s∇log p̂; and at α = 0 (t = 0) the posterior
    is uniform, E[x₁|y] = the training mean."""
    from gsm.scores.empirical import EmpiricalScore
    g = torch.Generator().manual_seed(7)
    alphas, stds = torch.tensor([0.0, 0.6, 0.95], dtype=torch.float64), torch.tensor([1.0, 0.4, 0.05], dtype=torch.float64)
    one = EmpiricalScore(alphas, stds, predicts="velocity")
    p = torch.randn(1, 1, 3, generator=g, dtype=torch.float64)
    one.fit(p)
    y = torch.randn(1, 6, 3, generator=g, dtype=torch.float64)
    for level, (a, s) in enumerate(zip(alphas.tolist(), stds.tolist())):
        assert torch.allclose(one(y, level), p - (y - a * p) / s, rtol=1e-12, atol=1e-12)
    x = torch.randn(1, 7, 3, generator=g, dtype=torch.float64)
    many = EmpiricalScore(alphas, stds, predicts="velocity")
    many.fit(x)
    assert torch.allclose(many(y, 0), x.mean(1, keepdim=True) - y, rtol=1e-12, atol=1e-12)
    for level in (1, 2):
        a, s = float(alphas[level]), float(stds[level])
        logp = reference_log_density(torch.full((7,), 1 / 7, dtype=torch.float64), x[0],
                                     torch.zeros(7, 3, 3, dtype=torch.float64), a, s)
        y_ = y[0].clone().requires_grad_(True)
        grad, = torch.autograd.grad(logp(y_).sum(), y_)
        assert torch.allclose(many(y, level)[0], (y[0] + s ** 2 * grad) / a + s * grad, rtol=1e-8, atol=1e-8)


def test_memorized_share_counts_samples_on_one_training_point():
    """Training points 0 and 10 on a line: a sample at 0.5 has d₁/d₂ = 0.5/9.5 < 1/3 (memorised), one at 4 has
    4/6 (not): shares 1/2 and the bootstrap s.e. of a constant is 0."""
    from gsm.theory.memorization import bootstrap_stderr, memorized_share
    train = torch.tensor([[[0.0], [10.0]]], dtype=torch.float64).expand(3, 2, 1)
    x = torch.tensor([[[0.5], [4.0]]], dtype=torch.float64).expand(3, 2, 1)
    share = memorized_share(x, train)
    assert torch.equal(share, torch.full((3,), 0.5, dtype=torch.float64))
    assert bootstrap_stderr(share) == 0.0 and bootstrap_stderr(share[:1]) is None
    v = torch.randn(400, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    assert bootstrap_stderr(v) == pytest.approx(float(v.std()) / 20, rel=0.1)     # the bootstrap of a mean


def test_memorized_share_in_chunks_equals_the_whole_distance_matrix(monkeypatch):
    """The share computed a chunk of samples at a time (3 rows of distances) equals the brute force written
    here on the whole M × N matrix, float32 samples included."""
    import gsm.theory.memorization as mem
    g = torch.Generator().manual_seed(3)
    train = torch.randn(2, 6, 2, generator=g, dtype=torch.float64)
    x = (train[:, torch.randint(6, (20,), generator=g)] + 0.2 * torch.randn(2, 20, 2, generator=g,
                                                                         dtype=torch.float64)).float()
    d = torch.linalg.vector_norm(x.double()[:, :, None] - train[:, None], dim=-1).sort(-1).values
    want = (d[..., 0] < d[..., 1] / 3).double().mean(-1)
    monkeypatch.setattr(mem, "CHUNK_DISTANCES", 18)          # 3 samples × 6 training points a chunk
    got = mem.memorized_share(x, train)
    assert torch.equal(got, want) and 0 < float(want.min()) and float(want.max()) < 1
