"""Config validation: every value is checked before a run does any work (docs/robustness.md).

A bad value raises `ConfigError` with the one-line message `<dotted.key> must be <range>, got <value>`;
the `gsm` command prints it as `gsm: error: <message>` and exits with status 2.

Each config group is checked by its own constructor (issue 14) when the run's specification is built
(`gsm.pipeline.spec.RunSpec.from_config`: the target, the train group, the sampler, the model class, the
top-level keys and, for a neural model, the optimizer factory). `validate(spec)` then checks the rules
that span groups, from what the groups declare:

* a Fourier-diagonal model (`ScoreModel.data_kind`, model=fourier_linear) if and only if
  data.kind=texture, and a sampler with a diagonal law (`Sampler.has_diagonal_law`) for a texture;
* a sampler that reads the score's matrices (`Sampler.requires_linear_score`: vp, edm, diffusers) needs a
  linear model (`ScoreModel.linear`), `gsm.pipeline.kinds.linear_score_mismatch`; `RunSpec.from_config`
  applies it to the two classes already, before the sampler is built (diffusers' import takes seconds);
* data=mixture: POT installed; its exact score (model=oracle) is not linear, so not with a sampler that
  reads the score's matrices, nor with sampler=flow's Gaussian closed-form flow (scheme=ode); data.kind=dataset (data=digits | patches): POT installed, and no model=oracle
  (real data have no exact score);
* eval.probe=true: a backend that calls the score as model(y, l) on d-dimensional points (not data=texture,
  not the per-eigenvalue path);
* the model's own constructor (the pipeline's builder, one replicate, a linear one at d = 1);
* train.solver=exact needs a linear model; a neural model needs a valid optimizer;
* stability, linear models only: the sampler's step bound (`Sampler.check_step`: Langevin with
  γ ≥ 2(λ_min + σ²) diverges even with the exact score, theory note §3) is an error; DSM-SGD with τ beyond
  the mean-square stability limit (`sgd_tau_limit`, note §2.3) is a warning, returned by `validate` (the
  run goes on and counts the diverged replicates).

`validate_config(cfg)` does both steps on a composed config (tests, other tools).
"""
from __future__ import annotations

import torch

from gsm.pipeline.kinds import backend_name, class_path, linear_score_mismatch, objective_predicts
from gsm.pipeline.spec import ConfigError, RunSpec, as_config_error
from gsm.training.objectives import sgd_mean_square_stable

__all__ = ["ConfigError", "as_config_error", "sgd_tau_limit", "validate", "validate_config"]


def sgd_tau_limit(lam, alphas, stds, batch_size: int, fourier: bool = False, objective=None):
    """The largest τ for which DSM-SGD on a linear score is mean-square stable, min over the noise levels.

    Full matrix (theory note §2.3, online Gaussian data): with m_j = α²λ_j + s², stable iff
    τs²(1+1/b)m_max < 2 and σ⁴R_b = Σ_j τs²m_j / [b(2 − τs²(1+1/b)m_j)] < 1 (R_b increases with τ:
    the limit is found by bisection). Each level l is taken with σ → s_l, λ → α_l²λ and the whole batch b:
    exact for b = 1 (a sample's update is then one-level SGD with step τ), an approximation otherwise.
    fourier (model=fourier_linear): every frequency is a scalar recursion, stable iff
    τs²m(1 + κ/b) < 2 (κ = 1 at a complex frequency, 2 at a real one; `gsm.training.objectives.DSM.circulant_variance`).
    objective: another objective's `mean_square_stable` and drift κ_l (`sgd_drift`; CFM κ = 1) in place of
    DSM's σ² (None: DSM).
    Returns (τ_max, the index of the worst level).
    """
    lam = torch.as_tensor(lam, dtype=torch.float64)
    b = float(batch_size)
    limits = []
    drift = (stds.to(torch.float64) ** 2 if objective is None or not hasattr(objective, "sgd_drift")
             else objective.sgd_drift(alphas, stds)).tolist()
    for a, s, kappa in zip(alphas.tolist(), stds.tolist(), drift):
        m = a * a * lam + s * s
        if fourier:
            from gsm.data.texture import kappa
            limits.append(float((2 / (s * s * m * (1 + kappa(lam.shape[-2]) / b))).min()))
            continue
        lam_l = a * a * lam.flatten()                    # the level's data α_l x has spectrum α_l²λ
        lo, hi = 0.0, 2 / (kappa * (1 + 1 / b) * float(m.max()))
        level = (torch.tensor([a], dtype=torch.float64), torch.tensor([s], dtype=torch.float64))
        for _ in range(100):
            tau = 0.5 * (lo + hi)
            stable = (sgd_mean_square_stable(lam_l, sigma=s, tau=tau, batch_size=int(b)) if objective is None
                      else objective.mean_square_stable(lam.flatten(), *level, tau, int(b)))
            lo, hi = (tau, hi) if stable else (lo, tau)
        limits.append(lo)
    worst = min(range(len(limits)), key=limits.__getitem__)
    return limits[worst], worst


def validate_config(cfg) -> list[str]:
    """Builds the run's specification from a composed gsm config and validates it (`validate`); raises
    ConfigError for the first bad value, returns the warnings to record before training."""
    return validate(RunSpec.from_config(cfg))


def validate(spec: RunSpec) -> list[str]:
    """Checks the rules that span groups (module doc); raises ConfigError for the first broken one.
    Returns the warnings to record before training (SGD beyond its mean-square stability limit)."""
    texture = spec.data.kind == "texture"
    _check_model_fits_data(spec)
    with as_config_error("sampler"):
        alphas, stds = spec.sampler.noise_levels(spec.train.sigma)
    _check_sampler_fits(spec)
    _check_mixture(spec)
    _check_probe(spec)
    model = _build_model(spec, alphas, stds)
    _check_objective(spec, model)
    if not model.linear:
        _check_neural(spec, model)
        return []
    _check_rank(spec)
    _check_langevin_step(spec.sampler, spec.data.spectrum, spec.train.sigma)
    if spec.train.solver != "sgd" or not model.requires_training:
        return []
    return _tau_warning(spec.train, spec.data.spectrum, alphas, stds, texture, spec.objective)


def _check_rank(spec: RunSpec) -> None:
    """A rank-deficient Σ (zero eigenvalues) only under a sampler that declares `allows_singular`: the
    others fail there (DDPM, DDIM: a last level without noise, where M = α²Σ̂ is singular; EDM diverged)."""
    zeros = int((spec.data.spectrum == 0).sum())
    if zeros and not getattr(spec.sampler, "allows_singular", False):
        raise ConfigError(f"data.spectrum has {zeros} zero eigenvalue(s) (rank-deficient Σ), which "
                          f"sampler {type(spec.sampler).__name__} does not support: "
                          "use sampler=langevin or sampler=vp, or eigenvalues > 0")


def _check_model_fits_data(spec: RunSpec) -> None:
    """A Fourier-diagonal score (model=fourier_linear) goes with data.kind=texture, and only with it."""
    texture, fourier = spec.data.kind == "texture", spec.model.data_kind == "texture"
    if texture and not fourier:
        raise ConfigError(f"model must be fourier_linear or fourier_oracle with data=texture (model=fourier_linear), "
                          f"got model._target_={spec.model.target}")
    if fourier and not texture:
        raise ConfigError(f"model._target_ must be a d-dimensional score model with data.dim "
                          f"(model=fourier_linear needs data=texture), got {spec.model.target}")


def _check_sampler_fits(spec: RunSpec) -> None:
    """What the sampler declares against the data and the model: a diagonal law for a texture
    (`has_diagonal_law`), a linear model when it reads the score's matrices (`requires_linear_score`)."""
    sampler = spec.sampler
    if spec.data.kind == "texture" and not sampler.has_diagonal_law:
        raise ConfigError(f"sampler must be one with a diagonal (Fourier) law for data.kind=texture (sampler="
                          f"langevin | ddpm | ddim), got sampler._target_={class_path(type(sampler))}")
    mismatch = linear_score_mismatch(type(sampler), spec.model.cls, model_target=spec.model.target)
    if mismatch:
        raise ConfigError(mismatch)


def _check_mixture(spec: RunSpec) -> None:
    """data=mixture: POT for its true OT distances; its exact score (model=oracle) is not linear, so a sampler
    that reads the score's matrices (`requires_linear_score`) cannot run it, nor the Gaussian closed-form flow
    (sampler=flow scheme=ode, `oracle_only`); sampler=flow reads its exact velocity.
    data.kind=dataset: POT, and no exact score to be model=oracle."""
    if spec.data.kind not in ("mixture", "dataset"):
        return
    import importlib.util
    if importlib.util.find_spec("ot") is None:
        raise ConfigError(f"data.kind={spec.data.kind} needs POT for its optimal-transport W2² "
                          "(pip install 'gsm[mixture]'), got no module named ot")
    if spec.data.kind == "dataset":
        if spec.model.exact:
            raise ConfigError(f"model must be linear | mlp | empirical | custom on data.kind=dataset ({spec.data.description}"
                              f" have no exact score), got model._target_={spec.model.target}")
        return
    sampler = spec.sampler
    if spec.model.exact and getattr(sampler, "requires_linear_score", False):
        raise ConfigError(f"sampler must be ddpm | ddim | langevin | flow with model=oracle on data=mixture (its exact "
                          f"score is not linear), got sampler._target_={class_path(type(sampler))}")
    if spec.model.exact and getattr(sampler, "oracle_only", None):
        # sampler=flow scheme=ode is the closed-form flow of a Gaussian target, not of the mixture
        raise ConfigError("sampler.scheme must be euler | midpoint | heun | rk4 with model=oracle on data=mixture "
                          "(ode is the exact flow of a Gaussian target), got ode")


def _check_probe(spec: RunSpec) -> None:
    """eval.probe=true calls the score as model(y, l) on d-dimensional points: not on the texture backend (its
    d = n² would need a (d + 1)-unknown fit per output) nor on the per-eigenvalue one (no model is built)."""
    if not spec.evaluation.probe:
        return
    with as_config_error("sampler"):
        name = backend_name(spec)
    if name in ("texture", "spectral"):
        raise ConfigError(f"eval.probe must be false on the {name} backend (the Gaussian-structure probe needs a "
                          "d-dimensional score model called as model(y, l): data=gaussian | mixture | digits | "
                          "patches off the per-eigenvalue path), got true")


def _check_objective(spec: RunSpec, model) -> None:
    """What the objective declares (`gsm.training.objectives`): what it learns (`predicts`: score, or velocity
    for objective=cfm) is what the sampler reads (`reads`, default score; named by its `reader`, default its
    class: sampler=diffusers names its scheduler, FlowMatch* read a velocity), an SGD trainer for train.solver=sgd
    (and any neural model), gsm's closed-form paths for data=texture; a sampler's `oracle_only` refusal
    (sampler=flow scheme=ode) for a learned model."""
    obj = spec.objective
    name = getattr(obj, "name", type(obj).__name__)
    reads, predicts = getattr(spec.sampler, "reads", "score"), getattr(obj, "predicts", "score")
    if reads != predicts:
        fix = "objective=cfm" if reads == "velocity" else "objective=dsm"
        other = "sampler=flow reads a velocity" if predicts == "velocity" else "a score sampler reads it"
        who = getattr(spec.sampler, "reader", None) or class_path(type(spec.sampler))
        raise ConfigError(f"objective must learn the {reads} that {who} reads "
                          f"({fix}), got objective {name} (a {predicts}: {other})")
    if getattr(model, "from_data", False) and getattr(model, "predicts", "score") != predicts:
        # a model set from the data that computes a score only: read as a velocity it would be a wrong answer
        raise ConfigError(f"model must compute the {predicts} that objective {name} learns (it declares predicts = "
                          f"{getattr(model, 'predicts', 'score')}), got model._target_={spec.model.target}")
    if model.requires_training and getattr(spec.sampler, "oracle_only", None):
        raise ConfigError(spec.sampler.oracle_only)
    if model.requires_training and spec.train.solver == "sgd" and not getattr(obj, "sgd_trainable", False):
        raise ConfigError(f"train.solver must be exact (or model=oracle) for objective {name}: it declares no SGD "
                          f"trainer (sgd_trainable is False), got train.solver=sgd")
    if not model.linear and not getattr(obj, "neural_trainable", getattr(obj, "sgd_trainable", False)):
        raise ConfigError(f"model must be linear (or oracle) for objective {name}: neural models are trained on the "
                          f"DSM loss only (neural_trainable is False), got model._target_={spec.model.target}")
    if not model.linear and predicts != "score" and getattr(obj, "neural_loss", None) is None:
        # the trainer's default loss is DSM's: it would fit a score, not the objective's field
        raise ConfigError(f"model must be linear (or oracle) for objective {name}: it learns a {predicts} but declares "
                          f"no neural_loss, got model._target_={spec.model.target}")
    if spec.data.kind == "texture" and not getattr(obj, "closed_forms", False):
        raise ConfigError(f"objective must be dsm for data=texture (the Fourier pipeline is written for DSM), "
                          f"got objective {name}")


def _build_model(spec: RunSpec, alphas, stds):
    """The score model as the pipeline builds it, with one replicate, so that its constructor's checks run.
    A linear model's checks do not depend on d: it is built at d = 1 (no d×d matrix per level is allocated,
    415 MB at d = 3072 and 11 levels); a neural or user model at the run's d (the run allocates R of them)."""
    from hydra.utils import instantiate

    from gsm.scores.nets import build_score_model
    with as_config_error("model"):
        if spec.data.kind == "texture":
            return instantiate(spec.model.options, size=spec.data.size, replicates=1, levels=alphas.numel(),
                               noise_stds=stds)
        dim = 1 if spec.model.linear else spec.data.dim
        return build_score_model(spec.model.options, dim=dim, replicates=1, alphas=alphas, stds=stds,
                                 predicts=objective_predicts(spec.objective))


def _check_neural(spec: RunSpec, model) -> None:
    """A neural score (or velocity) is trained by the optimizer of the optim group on the objective's loss."""
    if spec.train.solver == "exact":
        raise ConfigError("train.solver must be sgd for a non-linear model (train.solver=exact needs a linear "
                          "model, model=linear), got exact")
    if model.requires_training:     # a closed-form score (model=empirical) has no parameters to optimise
        with as_config_error("optim"):
            spec.optimizer(model.parameters())


def _check_langevin_step(sampler, lam, sigma) -> None:
    """The sampler's step against the target (`Sampler.check_step`: ULA's γ < 2(λ_min + σ²), theory note §3);
    λ_min of a texture is its floor."""
    with as_config_error("sampler"):
        sampler.check_step(float(lam.min()), sigma)


def _tau_warning(train, lam, alphas, stds, fourier: bool, objective=None) -> list[str]:
    """SGD beyond its mean-square stability limit: a warning (the run counts the diverged replicates)."""
    other = None if objective is None or getattr(objective, "name", None) == "dsm" else objective
    limit, worst = sgd_tau_limit(lam, alphas, stds, int(train.batch_size), fourier, other)
    if train.tau < limit:
        return []
    level = f" at noise level s = {float(stds[worst]):.3g}" if stds.numel() > 1 else ""
    return [f"train.tau = {train.tau} is beyond the SGD mean-square stability limit τ < {limit:.4g}{level} "
            f"(theory note §2.3): replicates are likely to diverge (recorded in diverged_at)"]
