"""Non-linear score models: an MLP batched over replicates, time embeddings, any user model.

Every score model of the pipeline maps y (R, B, d) and a level l to s(y, l) (R, B, d): R independent
replicates, B points, d dimensions. Level l ∈ {0..L−1} indexes the sampler's noise levels
y = α_l x + s_l z (`sampler.noise_levels`): L = 1 for Langevin (α = 1, s = σ), one level per sampling
timestep for DDPM/DDIM (α = √ᾱ_t, s = √(1−ᾱ_t)). The model receives the table at construction
(`alphas`, `noise_stds`), so it can map l to s_l.

* `MLPScore`: s(y, l) = −A_l y − f_θ(y, e(l)) / s_l, f an MLP with its R replicates stored as stacked
  weights (R, in, out) (one batched matmul per layer, no Python loop). −f/s_l is the ε-parametrisation
  (ε̂ = −s·s(y) = s A y + f), so the DSM loss ½‖s_l·s(y, l) + z‖² has unit scale at every level.
  The linear skip −A_l y is optional; with depth = 0 and skip, the model *is* the linear score.
  For a velocity objective (objective=cfm: `predicts="velocity"`, passed by the pipeline) it is the velocity
  v(y, l) = −B_l y + f_θ(y, e(t_l)), t_l = α_l/(α_l + s_l) the level's time (t on the linear path
  y = t x₁ + (1 − t)x₀): the CFM target x₁ − x₀ has unit scale at every t, so no 1/s_l.
* `Replicated`: R independent instances of a user model built from its `_target_` (a loop over r).
* `build_score_model`: the pipeline's constructor for both kinds.
* `gaussian_fit_w2`: W2² between the target and the Gaussian fit of a non-Gaussian sampler's
  particles, with its 1/M particle bias.
"""
from __future__ import annotations

import inspect
import math

import torch
from hydra.utils import get_object, instantiate
from torch import nn
from torch.nn import functional as F

from gsm.checks import choice, number
from gsm.scores.base import ScoreModel, UserScore

ACTIVATIONS = ("silu", "relu", "gelu", "tanh", "softplus")
PREDICTS = ("score", "velocity")     # what an objective learns (`predicts`): DSM a score, CFM a velocity


EMBEDDINGS = ("sinusoidal", "learned")


class BatchedLinear(nn.Module):
    """R independent affine maps y W_r + b_r: y (R, B, n_in) → (R, B, n_out).
    Initialised as R independent `nn.Linear` layers (uniform ±1/√n_in), or zero with `zero=True`."""

    def __init__(self, replicates: int, n_in: int, n_out: int, zero: bool = False):
        super().__init__()
        bound = 0.0 if zero else 1 / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(replicates, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(replicates, 1, n_out).uniform_(-bound, bound))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # bmm then add_: ~1.7× faster on the CPU than baddbmm with a broadcast bias, which first copies it
        return torch.bmm(y, self.weight).add_(self.bias)


def sinusoidal_embedding(u: torch.Tensor, dim: int, max_freq: float = 100.0) -> torch.Tensor:
    """e(u) = [sin(ω_k u), cos(ω_k u)]_k, ω_k geometric from 1 to `max_freq` (k < dim/2).
    u (...) → (..., dim). The MLP embeds u = log s_l, the log noise std of level l (as EDM's c_noise)."""
    half = dim // 2
    freqs = torch.logspace(0, math.log10(max_freq), half, dtype=u.dtype, device=u.device)
    arg = u.unsqueeze(-1) * freqs
    return torch.cat([arg.sin(), arg.cos()], -1)


def level_table(name: str, values, levels: int, positive: bool) -> torch.Tensor:
    """A per-level table (α_l or s_l) as float64 (L,) on the CPU (also when the model is built on the meta
    device), checked: `levels` finite values, > 0 (`positive`) or ≥ 0; None: ones."""
    t = torch.ones(levels, dtype=torch.float64, device="cpu") if values is None else \
        torch.as_tensor(values, dtype=torch.float64, device="cpu").flatten()
    ok = t.numel() == levels and bool(torch.isfinite(t).all()) and bool(((t > 0) if positive else (t >= 0)).all())
    if not ok:
        raise ValueError(f"{name} must hold {levels} values {'>' if positive else '>='} 0, got {t.tolist()}")
    return t


class MLPScore(ScoreModel):
    """s(y, l) = −A_l y − f_θ([y, e(l)]) / s_l for R replicates (see the module docstring).

    Args:
        dim: d.  replicates: R.  levels: L.  noise_stds: (L,) s_l (from the sampler).
        width, depth: hidden units per layer and number of hidden layers of f (depth 0: f ≡ 0).
        activation: silu | relu | gelu | tanh | softplus.
        embedding: time conditioning when L > 1: sinusoidal (of log s_l) | learned (a vector per
            level, N(0, I) at init). With L = 1 (Langevin at a fixed σ) there is none.
        embed_dim: size of e(l).
        skip: add the linear score −A_l y, A (R, L, d, d) from 0.
        predicts: score (s as above) | velocity (v(y, l) = −A_l y + f_θ([y, e(t_l)]), t_l = α_l/(α_l + s_l),
            embedded sinusoidally; s_l = 0 allowed): what the objective learns, passed by the pipeline.
        alphas: (L,) α_l (from the sampler; needed by predicts=velocity).
    The last layer of f starts at zero, so at initialisation s = −A₀ y = 0.
    """

    requires_training = True
    level_tensors = True        # forward accepts per-sample levels (R or B,): one call per DSM batch

    def __init__(self, dim: int, replicates: int = 1, levels: int = 1, noise_stds=None, width: int = 64,
                 depth: int = 2, activation: str = "silu", embedding: str = "sinusoidal",
                 embed_dim: int = 32, skip: bool = False, predicts: str = "score", alphas=None):
        super().__init__()
        for name, v in (("dim", dim), ("replicates", replicates), ("levels", levels), ("width", width)):
            number(f"model.{name}", v, 1, integer=True)
        number("model.depth", depth, 0, integer=True)
        choice("model.activation", activation, ACTIVATIONS)
        choice("model.embedding", embedding, EMBEDDINGS)
        if number("model.embed_dim", embed_dim, 2, integer=True, why="even") % 2:
            raise ValueError(f"model.embed_dim must be an integer >= 2 (even), got {embed_dim}")
        if not choice("model.skip", skip, (True, False)) and depth == 0:
            raise ValueError("model.depth must be >= 1 when model.skip=false (the score would be 0)")
        self.velocity = choice("predicts", predicts, PREDICTS) == "velocity"
        self.register_buffer("noise_stds", level_table("noise_stds", noise_stds, levels, positive=not self.velocity))
        if self.velocity:           # the level's time t_l = α_l/(α_l + s_l), the coordinate the net embeds
            a = level_table("alphas", alphas, levels, positive=False)
            if not bool((a + self.noise_stds > 0).all()):
                raise ValueError(f"alphas + noise_stds must be > 0 at every level (the time t = α/(α + s)), "
                                 f"got {(a + self.noise_stds).tolist()}")
            self.register_buffer("times", a / (a + self.noise_stds))
        self.act = getattr(F, activation)
        self.embedding = embedding if levels > 1 else None
        e = embed_dim if self.embedding else 0
        if self.embedding == "learned":
            self.level_embedding = nn.Parameter(torch.randn(replicates, levels, embed_dim))
        self.layers = nn.ModuleList(
            [BatchedLinear(replicates, (dim + e) if i == 0 else width, width) for i in range(depth)])
        self.out = BatchedLinear(replicates, width, dim, zero=True) if depth else None
        self.A = nn.Parameter(torch.zeros(replicates, levels, dim, dim)) if skip else None
        self.embed_dim = embed_dim

    def _embed(self, y: torch.Tensor, level) -> torch.Tensor:
        """e(l) broadcast to (R, B, embed_dim); level an int or (B,)."""
        R, B, _ = y.shape
        if self.embedding == "learned":
            emb = self.level_embedding[:, level]                                   # (R, [B,] e)
        elif self.velocity:
            emb = sinusoidal_embedding(self.times[level].to(y.dtype), self.embed_dim)
            emb = emb.expand(R, *emb.shape)
        else:
            emb = sinusoidal_embedding(self.noise_stds[level].log().to(y.dtype), self.embed_dim)
            emb = emb.expand(R, *emb.shape)                                        # (R, [B,] e)
        return emb if emb.dim() == 3 else emb.unsqueeze(-2).expand(R, B, -1)

    def forward(self, y: torch.Tensor, level=0) -> torch.Tensor:
        """y (R, B, d) in any dtype, level an int or a LongTensor (B,) of per-sample levels → (R, B, d)
        in y's dtype (the network runs in its own dtype, e.g. float32 under a float64 sampler)."""
        dtype = self.out.weight.dtype if self.out is not None else self.A.dtype
        h = y.to(dtype)
        per_sample = torch.is_tensor(level) and level.dim() > 0
        out = torch.zeros_like(h)
        if self.out is not None:
            z = torch.cat([h, self._embed(h, level)], -1) if self.embedding else h
            for layer in self.layers:
                z = self.act(layer(z))
            if self.velocity:
                out = out + self.out(z)
            else:
                s = self.noise_stds.to(dtype)[level]
                out = out - self.out(z) / (s.view(1, -1, 1) if per_sample else s)
        if self.A is not None:
            if per_sample:   # A_l per point: (R, B, d, d) gathered
                out = out - (self.A[:, level] @ h.unsqueeze(-1)).squeeze(-1)
            else:
                out = out - h @ self.A[:, level].transpose(-1, -2)
        return out.to(y.dtype)


def _forward_takes_level(module: nn.Module) -> bool:
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class Replicated(ScoreModel):
    """R independent instances of a single-instance user model, called one after the other.

    The user model maps y (B, d) → s (B, d) with forward(y) (no time input: one noise level) or
    forward(y, t), t the level index l (a Python int in 0..L−1; s_l = noise_stds[l]). It is moved to
    the run's device and dtype; inputs are cast to its dtype and outputs back to the caller's.
    """

    requires_training = True

    def __init__(self, models, levels: int = 1):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.conditioned = _forward_takes_level(self.models[0])
        if levels > 1 and not self.conditioned:
            raise ValueError(f"model {type(self.models[0]).__name__}.forward(y) takes no level, but the sampler "
                             f"has {levels} noise levels: define forward(y, t), t the level index")

    def forward(self, y: torch.Tensor, level: int = 0) -> torch.Tensor:
        p = next(iter(self.models[0].parameters()), None)
        dtype = y.dtype if p is None else p.dtype
        outs = [m(y[r].to(dtype), level) if self.conditioned else m(y[r].to(dtype))
                for r, m in enumerate(self.models)]
        return torch.stack(outs).to(y.dtype)


def build_score_model(model_cfg, *, dim: int, replicates: int, alphas: torch.Tensor, stds: torch.Tensor,
                      seed: int | None = None, predicts: str = "score"):
    """Instantiates `model_cfg` (a config or a mapping with `_target_`) for the pipeline; with `seed`, the parameters'
    initialisation is drawn from torch.manual_seed(seed) (the global RNG state is restored after).

    The constructor gets, among dim, replicates, levels (L), alphas (α_l, (L,)) and noise_stds (s_l,
    (L,)), those its signature names (all but `replicates` if it takes **kwargs), and `predicts` (what the
    objective learns: score | velocity) if it names it (`MLPScore`). A class that names
    `replicates` holds the R replicates itself and takes y (R, B, d) (`LinearScore`, `MLPScore`);
    any other is built R times and wrapped in `Replicated`.
    """
    target = get_object(model_cfg["_target_"])
    params = inspect.signature(target).parameters
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    offered = {"dim": dim, "replicates": replicates, "levels": int(alphas.numel()),
               "alphas": alphas, "noise_stds": stds}
    kw = {k: v for k, v in offered.items() if k in params or (var_kw and k != "replicates")}
    if "predicts" in params:        # named only: a **kwargs model written for 0.x is not handed a new key
        kw["predicts"] = predicts
    extra = [k for k in model_cfg if not k.startswith("_") and k not in params and not var_kw]
    if extra:
        raise ValueError(f"model {model_cfg['_target_']} takes no argument {', '.join(extra)} (from the model "
                         "config); for a user model start from model=custom: model=custom model._target_=...")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if "replicates" in kw:
            model = instantiate(model_cfg, **kw)
            # a batched user module declares nothing: taken as a neural score
            return model if isinstance(model, ScoreModel) else UserScore(model, _forward_takes_level(model))
        return Replicated([instantiate(model_cfg, **kw) for _ in range(replicates)], levels=int(alphas.numel()))
