"""Gaussian mixtures p(x) = Σ_k w_k N(x; μ_k, Σ_k) (data.kind=mixture): the first non-Gaussian data family.

The mixture is centred (Σ_k w_k μ_k = 0), so its Gaussian surrogate N(0, Σ), Σ = Σ_k w_k (Σ_k + μ_k μ_kᵀ),
has the data's mean and covariance, and every linear path of gsm (which models N(0, Σ)) runs on it
unchanged: a linear score trained on the mixture's samples learns the surrogate's score.

Noised by y = α x + s z, z ~ N(0, I), the mixture stays a mixture, of N(α μ_k, α²Σ_k + s²I), so its exact
score at every level is the responsibility-weighted mix of the component scores,

    ∇ log p_{α,s}(y) = −Σ_k r_k(y) P_k (y − α μ_k),  P_k = (α²Σ_k + s²I)⁻¹,
    r_k(y) = softmax_k [log w_k − ½ (y − αμ_k)ᵀ P_k (y − αμ_k) + ½ log det P_k],

computed by log-sum-exp in float64 (`GaussianMixture.score`). Families with one knob each:
`two_clusters` (±μ, shared Σ_c, `separation`) and `random_means` (K random means); `mixture_family` is
the config's constructor.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from gsm.checks import choice, number
from gsm.data.gaussian import Gaussian

FAMILIES = ("two_clusters", "random_means")
WEIGHT_TOLERANCE = 1e-6     # |Σ w_k − 1| allowed (weights typed with 6 digits)
OT_PARTICLES = 256          # data.ot_particles' default, M': ot.emd2 is O(M'³), ~15 ms per solve at 256


def check_weights(weights, components: int) -> torch.Tensor:
    """data.weights: K numbers ≥ 0 summing to 1 (null: 1/K each) → (K,) float64."""
    if weights is None:
        return torch.full((components,), 1.0 / components, dtype=torch.float64)
    vals = list(weights) if isinstance(weights, Iterable) and not isinstance(weights, (str, bytes)) else None
    ok = vals is not None and len(vals) == components
    try:
        w = torch.tensor([number("data.weights", v, 0) for v in vals], dtype=torch.float64) if ok else None
    except ValueError:
        w = None
    if w is None or abs(float(w.sum()) - 1) > WEIGHT_TOLERANCE:
        raise ValueError(f"data.weights must be null or data.components = {components} numbers >= 0 summing to 1, "
                         f"got {weights if vals is None else vals}")
    return w


class GaussianMixture:
    """p(x) = Σ_k w_k N(x; μ_k, Σ_k), centred.

    Args:
        weights: w (K,), ≥ 0, summing to 1.  means: μ (K, d), Σ_k w_k μ_k = 0.
        covariances: Σ_k (K, d, d), symmetric positive-definite.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covariances = torch.as_tensor(covariances, dtype=torch.float64)
        self.roots = torch.linalg.cholesky(self.covariances)      # Σ_k = L_k L_kᵀ, for sampling

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def components(self) -> int:
        return self.weights.numel()

    @property
    def is_gaussian(self) -> bool:
        """Every component the same (e.g. two_clusters at separation 0): the mixture is one Gaussian."""
        return bool(torch.allclose(self.means, self.means[:1], rtol=0, atol=1e-12)
                    and torch.allclose(self.covariances, self.covariances[:1], rtol=0, atol=1e-12))

    @property
    def covariance(self) -> torch.Tensor:
        """The surrogate's Σ = Σ_k w_k (Σ_k + μ_k μ_kᵀ) (the mixture is centred), (d, d) float64."""
        outer = self.means.unsqueeze(-1) * self.means.unsqueeze(-2)
        return (self.weights.view(-1, 1, 1) * (self.covariances + outer)).sum(0)

    def surrogate(self) -> Gaussian:
        """N(0, Σ) with the mixture's covariance: Σ = U diag(λ) Uᵀ by eigh."""
        return Gaussian.from_covariance(self.covariance)

    def sample(self, shape, generator: torch.Generator | None = None, dtype=torch.float64, device=None,
               labels: bool = False):
        """x = μ_k + L_k z, k ~ w, z ~ N(0, I): shape (*shape, d) (and the components k, (*shape,), with labels)."""
        shape = tuple(shape)
        device = torch.device("cpu") if device is None else torch.device(device)
        n = math.prod(shape)
        k = torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=device)
        x = self.means.to(device)[k] + (self.roots.to(device)[k] @ z.unsqueeze(-1)).squeeze(-1)
        x = x.reshape(*shape, self.dim).to(dtype)
        return (x, k.reshape(shape)) if labels else x

    def level_precisions(self, alpha: float, std: float):
        """P_k = (α²Σ_k + s²I)⁻¹ (K, d, d) and ½ log det P_k (K,), float64."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        chol = torch.linalg.cholesky(alpha ** 2 * self.covariances + std ** 2 * eye)
        half_logdet = -torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return torch.cholesky_inverse(chol), half_logdet

    def log_joint(self, y: torch.Tensor, alpha: float = 1.0, std: float = 0.0):
        """log w_k + log N(y; αμ_k, α²Σ_k + s²I) (…, K) and the component scores −P_k(y − αμ_k) (…, K, d),
        for y (…, d), float64."""
        P, half_logdet = (t.to(y.device) for t in self.level_precisions(alpha, std))
        diff = y.to(torch.float64).unsqueeze(-2) - alpha * self.means.to(y.device)       # (…, K, d)
        scores = -torch.einsum("kij,...kj->...ki", P, diff)        # one GEMM, not K·B tiny ones
        quad = (diff * scores).sum(-1)                                                   # −(y − αμ)ᵀP(y − αμ)
        logp = self.weights.to(y.device).log() + 0.5 * quad + half_logdet - 0.5 * self.dim * math.log(2 * math.pi)
        return logp, scores

    def log_density(self, y: torch.Tensor, alpha: float = 1.0, std: float = 0.0) -> torch.Tensor:
        """log p_{α,s}(y) by log-sum-exp over the components: y (…, d) → (…), float64."""
        return torch.logsumexp(self.log_joint(y, alpha, std)[0], -1)

    def responsibilities(self, y: torch.Tensor, alpha: float = 1.0, std: float = 0.0) -> torch.Tensor:
        """r_k(y), the posterior of the components given y: (…, d) → (…, K), float64."""
        return torch.softmax(self.log_joint(y, alpha, std)[0], -1)

    def score(self, y: torch.Tensor, alpha: float = 1.0, std: float = 0.0) -> torch.Tensor:
        """∇ log p_{α,s}(y) = Σ_k r_k(y) (−P_k (y − αμ_k)) (module doc): (…, d) → (…, d), float64."""
        logp, scores = self.log_joint(y, alpha, std)
        return (torch.softmax(logp, -1).unsqueeze(-1) * scores).sum(-2)

    def velocity(self, y: torch.Tensor, alpha: float, std: float) -> torch.Tensor:
        """E[x₁ − x₀ | αx₁ + s x₀ = y], x₁ from the mixture and x₀ ~ N(0, I) (the flow-matching target at the
        level (α, s); on the linear path α = t, s = 1 − t it is the velocity). Per component, with its score
        s_k = −P_k(y − αμ_k): E[x₁|y, k] = μ_k − αΣ_k s_k and E[x₀|y, k] = −s·s_k, so

            w(y) = Σ_k r_k(y) (μ_k − (αΣ_k − sI) s_k),

        finite at α = 0 (t = 0) and at s = 0 (t = 1, every Σ_k positive-definite). (…, d) → (…, d), float64."""
        logp, scores = self.log_joint(y, alpha, std)                                       # (…, K), (…, K, d)
        cov_scores = torch.einsum("kij,...kj->...ki", self.covariances.to(y.device), scores)
        per_component = self.means.to(y.device) - alpha * cov_scores + std * scores
        return (torch.softmax(logp, -1).unsqueeze(-1) * per_component).sum(-2)

    def mode_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The share of the points x (R, M, d) assigned to each component by their posterior (argmax r_k(x)):
        (R, K) float64. A point whose largest r_k is shared (identical components: separation 0) counts
        equally for each of them; argmax alone gave it all to the first."""
        r = self.responsibilities(x)
        top = (r == r.max(-1, keepdim=True).values).to(torch.float64)
        return (top / top.sum(-1, keepdim=True)).mean(-2)


def centred(means: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """μ_k − Σ_j w_j μ_j: the means of the centred mixture."""
    return means - (weights.unsqueeze(-1) * means).sum(0)


def two_clusters(dim: int, separation: float = 4.0, component_std: float = 0.5, weights=None) -> GaussianMixture:
    """w_1 N(+μ, σ_c²I) + w_2 N(−μ', σ_c²I) along u = (1, …, 1)/√d, ‖μ_1 − μ_2‖ = separation · σ_c (centred)."""
    dim = number("data.dim", dim, 1, integer=True)
    separation = number("data.separation", separation, 0)
    std = number("data.component_std", component_std, 0, low_open=True)
    w = check_weights(weights, 2)
    u = torch.full((dim,), 1 / math.sqrt(dim), dtype=torch.float64)
    means = torch.stack([u, -u]) * (0.5 * separation * std)
    return GaussianMixture(w, centred(means, w), std ** 2 * torch.eye(dim, dtype=torch.float64).expand(2, dim, dim))


def random_means(dim: int, components: int = 4, separation: float = 4.0, component_std: float = 0.5,
                 weights=None, seed: int = 0) -> GaussianMixture:
    """Σ_k w_k N(μ_k, σ_c²I), μ_k ~ N(0, a²I) drawn from `seed`, a = separation · σ_c / √(2d) (two means are then
    separation · σ_c apart on average, E‖μ_j − μ_k‖² = 2a²d), centred."""
    dim = number("data.dim", dim, 1, integer=True)
    K = number("data.components", components, 1, integer=True)
    separation = number("data.separation", separation, 0)
    std = number("data.component_std", component_std, 0, low_open=True)
    w = check_weights(weights, K)
    g = torch.randn(K, dim, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    means = g * (separation * std / math.sqrt(2 * dim))
    return GaussianMixture(w, centred(means, w), std ** 2 * torch.eye(dim, dtype=torch.float64).expand(K, dim, dim))


def mixture_family(family: str, dim: int, components: int = 2, separation: float = 4.0, component_std: float = 0.5,
                   weights=None, seed: int = 0) -> GaussianMixture:
    """The config's constructor (conf/data/mixture.yaml): data.family two_clusters (K = 2) | random_means."""
    choice("data.family", family, FAMILIES)
    K = number("data.components", components, 1, integer=True)
    if family == "two_clusters":
        if K != 2:
            raise ValueError(f"data.components must be 2 for data.family=two_clusters, got {components}")
        return two_clusters(dim, separation, component_std, weights)
    return random_means(dim, K, separation, component_std, weights, seed)
