"""Any diffusers scheduler on gsm's linear score, with the exact law through diffusers' own step functions.

The score is presented to the scheduler as an ε-prediction network, the standard sampling loop

    for t in scheduler.timesteps:  ε̂ = s_t A_t · scale_model_input(x, t);  x = scheduler.step(ε̂, t, x).prev_sample

from x_T ~ N(0, init_noise_sigma² I). Level of a timestep t (0-indexed as in diffusers): ᾱ(t) = the
training alphas_cumprod[t] for integer t; for fractional t (Karras sigmas, Euler/Heun) the inverse of
diffusers' `_sigma_to_t`, log σ(t) linear between integer timesteps, σ² = (1 − ᾱ)/ᾱ. The model reads
α_t = √ᾱ(t), s_t = √(1 − ᾱ(t)), so ε̂ = s_t A_t x_in is the exact ε of the noised target when A_t is the
exact score (α_t²Σ + s_t²I)⁻¹. The levels are the distinct timesteps the loop queries (a dry run).

Float64: the training schedule is rebuilt in float64 (linear / scaled_linear betas recomputed; other
schedules upcast) and every floating tensor of the scheduler is upcast after `set_timesteps`. Some steps
(DPMSolverMultistep, Euler, EulerAncestral) cast the sample to float32 internally: their laws carry
float32 rounding (~1e-7 relative); DDPM, DDIM, UniPC and Heun stay in float64.

Exact law (`gsm.theory.chain.exact_law`): every scheduler step is linear in (x, ε̂, noise), so the output is
M x_T + Σ_j N_j ξ_j, read off by pushing the basis vectors of x_T and of each noise injection through the
loop as one batch. The noise is made explicit through the step's `variance_noise` argument where it has
one (DDIM, DPMSolverMultistep), otherwise by handing the step our noise when it calls its module's
`randn_tensor` (DDPM, EulerAncestral). A scheduler whose randomness escapes both gets `law_method =
particles`: its law is the second moment of `law_particles` particles and the 1/M bias is removed from W2².

Flow-matching schedulers (`FlowMatchEulerDiscreteScheduler`, `FlowMatchHeunDiscreteScheduler`, SD3 / Flux;
docs/flow.md): diffusers' σ runs from 1 (noise) to 0 (data), x_σ = (1 − σ)x₁ + σx₀, and the model predicts
dx/dσ = x₀ − x₁ = −v, the negative of gsm's velocity in t = 1 − σ. So the scheduler reads a velocity
(`reads`, objective=cfm): the level of a call is its own σ (the entry of `scheduler.sigmas` at the timestep),
α = 1 − σ, s = σ, and the model output is u = B x_in for the learned v = −B x. `sampler.shift` is their
time shift σ ↦ sσ/(1 + (s − 1)σ); `sampler.mu` the μ of dynamic shifting (with
`+sampler.config.use_dynamic_shifting=true`). Their steps cast the sample to float32; gsm's rows carry a
tensor type that keeps float64 through that cast (`Float64Rows`), so their laws are exact to float64.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from gsm.checks import number
from gsm.samplers.base import Sampler
from gsm.theory.chain import exact_law
from gsm.theory.law import PushLaw

F64 = torch.float64
FLOW_MATCH = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")   # tested; read a velocity
TESTED = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
          "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", *FLOW_MATCH)
LINEAR = {"clip_sample": False, "thresholding": False}     # diffusers' clipping makes the sampler non-linear
# the training schedule of every scheduler unless sampler.config overrides it: diffusers' DDPM default
# (HeunDiscreteScheduler's own default is Stable Diffusion's β 0.00085..0.012)
# schedulers whose step keeps no state but x (and the step index): their law is the per-step recursion
# C ← F_k C F_kᵀ + G_k G_kᵀ (gsm.theory.chain.output_law, stepwise), O(K) instead of O(K·J) for stochastic ones
HISTORY_FREE = ("DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler")
TRAINING = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}


def import_diffusers():
    """diffusers, or an ImportError that names the extra."""
    try:
        import diffusers
    except ImportError:
        raise ImportError("sampler=diffusers needs the diffusers package: pip install 'gsm[diffusers]'") from None
    return diffusers


def is_flow_match(name: str) -> bool:
    """Whether a scheduler class is one of diffusers' flow-matching schedulers (they predict x₀ − x₁ on
    σ ∈ [0, 1], no training β schedule): by diffusers' naming, FlowMatch*."""
    return name.startswith("FlowMatch")


class Float64Rows(torch.Tensor):
    """A float64 tensor whose casts to float32 are no-ops (the FlowMatch steps' `sample.to(torch.float32)`),
    so that the exact law pushed through a scheduler's own step stays float64. Every result of an operation on
    it is again a Float64Rows; `.as_subclass(torch.Tensor)` ends it."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_float32 = func is torch.Tensor.float or (func is torch.Tensor.to and (
            torch.float32 in args[1:] or kwargs.get("dtype") is torch.float32))
        if to_float32 and args[0].dtype == F64:
            return args[0]
        return super().__torch_function__(func, types, args, kwargs)


def scheduler_names() -> list[str]:
    """The scheduler class names that diffusers.schedulers exports (PyTorch ones: not Flax), sorted."""
    d = import_diffusers()
    return sorted(n for n in dir(d.schedulers) if n.endswith("Scheduler") and not n.startswith("Flax"))


def _upcast(sched) -> None:
    """Every floating tensor attribute of the scheduler to float64 (in place)."""
    for k, v in list(vars(sched).items()):
        if torch.is_tensor(v) and v.is_floating_point():
            setattr(sched, k, v.to(F64))


def _float64_schedule(sched) -> None:
    """The training schedule in float64: betas recomputed for linear / scaled_linear (diffusers builds them
    in float32), else upcast; then alphas, alphas_cumprod and what __init__ derives from them."""
    c = sched.config
    T = c.num_train_timesteps
    if c.get("trained_betas") is None and not c.get("rescale_betas_zero_snr") and c.beta_schedule == "linear":
        betas = torch.linspace(c.beta_start, c.beta_end, T, dtype=F64)
    elif c.get("trained_betas") is None and not c.get("rescale_betas_zero_snr") and c.beta_schedule == "scaled_linear":
        betas = torch.linspace(c.beta_start ** 0.5, c.beta_end ** 0.5, T, dtype=F64) ** 2
    else:
        betas = sched.betas.to(F64)
    sched.betas, sched.alphas = betas, 1 - betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, 0)
    ac = sched.alphas_cumprod
    derived = {"alpha_t": ac.sqrt(), "sigma_t": (1 - ac).sqrt(), "lambda_t": 0.5 * (ac.log() - (1 - ac).log()),
               "final_alpha_cumprod": torch.tensor(1.0, dtype=F64) if c.get("set_alpha_to_one") else ac[0]}
    for k, v in derived.items():
        if hasattr(sched, k):
            setattr(sched, k, v)
    _upcast(sched)


def make_scheduler(name: str, config: dict, steps: int, mu: float | None = None):
    """diffusers.<name>(**config) with gsm's linear defaults (clip_sample, thresholding off), its training
    schedule in float64 (FlowMatch: no β schedule; its σ grid as diffusers builds it), `set_timesteps(steps)`
    (with `mu` for dynamic shifting), everything upcast to float64."""
    d = import_diffusers()
    names = scheduler_names()
    if name not in names:
        stems = {n.removesuffix("Scheduler").lower(): n for n in names}     # "Eulr" is close to "euler", not to its class name
        close = [n for n in names if name.lower() in n.lower()] or \
            [stems[s] for s in difflib.get_close_matches(name.lower().removesuffix("scheduler"), stems, n=3)]
        close = sorted(close, key=lambda n: (n not in TESTED, len(n)))[:3]
        raise ValueError(f"sampler.scheduler must be a diffusers scheduler class, got {name}"
                         + (f" (did you mean {' or '.join(close)}?)" if close else "")
                         + f"; tested: {', '.join(TESTED)} ({len(names)} in diffusers.schedulers)")
    try:
        cls = getattr(d.schedulers, name)
    except (AttributeError, ImportError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, d.SchedulerMixin)):
        raise ValueError(f"sampler.scheduler must be a scheduler class importable from diffusers.schedulers, got {name}")
    params = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
    for k in config:
        if k not in params:
            raise ValueError(f"sampler.config.{k} must be a parameter of {name} ({', '.join(sorted(params))}), got {k}")
    kwargs = {k: v for k, v in (TRAINING | LINEAR).items() if k in params} | dict(config)
    for k in LINEAR:
        if kwargs.get(k):
            raise ValueError(f"sampler.config.{k} must be false (gsm's exact laws need a linear sampler), got {kwargs[k]}")
    if kwargs.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(f"sampler.config.prediction_type must be epsilon (gsm presents its score as an ε-prediction "
                         f"model), got {kwargs['prediction_type']}")
    try:
        sched = cls(**kwargs)
        if not is_flow_match(name):
            _float64_schedule(sched)
        sched.set_timesteps(int(steps), **({} if mu is None else {"mu": float(mu)}))
    except (ValueError, TypeError, NotImplementedError, AssertionError) as e:
        raise ValueError(f"sampler.config must be accepted by {name}.{'__init__/set_timesteps'}, got {dict(config)}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    _upcast(sched)
    return sched


def steps_for_nfe(name: str, config: dict, nfe: int, mu: float | None = None) -> int:
    """The most inference steps K whose loop makes at most `nfe` model calls (len(timesteps): K for
    one-call steps, 2K − 1 for HeunDiscreteScheduler and FlowMatchHeunDiscreteScheduler)."""
    if int(nfe) != nfe or nfe < 1:
        raise ValueError(f"sampler.nfe must be an integer >= 1 (or null: sampler.steps), got {nfe}")
    K = int(nfe)
    while K > 1 and len(make_scheduler(name, config, K, mu).timesteps) > nfe:
        K -= 1
    return K


def flow_sigma(sched, t) -> float:
    """σ of a FlowMatch scheduler's timestep t: its own `sigmas` entry at t's (first) index in `timesteps`
    (the step reads that σ; t = σ·num_train_timesteps only up to float32 rounding)."""
    index = (sched.timesteps == float(t)).nonzero()
    return float(sched.sigmas[int(index[0, 0])])


def timestep_level(sched, t) -> float:
    """ᾱ(t) of the training schedule at a (possibly fractional) 0-indexed timestep t (module doc)."""
    ac = sched.alphas_cumprod
    t = float(t)
    if t == int(t) and 0 <= t < ac.numel():
        return float(ac[int(t)])
    log_sigma = 0.5 * ((1 - ac) / ac).log().numpy()
    sigma2 = math.exp(2 * float(np.interp(t, np.arange(ac.numel()), log_sigma)))
    return 1 / (1 + sigma2)


@contextmanager
def _noise_from(module, supply):
    """While active, `randn_tensor` in the scheduler's module returns supply(shape) (our noise)."""
    original = getattr(module, "randn_tensor")
    module.randn_tensor = lambda shape, *a, **k: supply(shape)
    try:
        yield
    finally:
        module.randn_tensor = original


@dataclass
class Diffusers(Sampler):
    """A diffusers scheduler as a gsm sampler: its own step function is the push (run on basis rows), from
    which the exact law and the prediction derive (`gsm.theory.law.PushLaw`)."""

    scheduler: str = "DPMSolverMultistepScheduler"
    steps: int = 20
    particles: int = 2000
    config: dict = field(default_factory=dict)
    nfe: int | None = None
    step_kwargs: dict = field(default_factory=dict)
    law_particles: int = 100_000
    shift: float | None = None
    mu: float | None = None

    has_diagonal_law = False        # data.kind=texture: not supported

    def __post_init__(self):
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"sampler.steps must be an integer >= 1, got {self.steps}")
        if int(self.particles) != self.particles or self.particles < 2:
            raise ValueError(f"sampler.particles must be an integer >= 2, got {self.particles}")
        self.config, self.step_kwargs = dict(self.config or {}), dict(self.step_kwargs or {})
        self.flow = is_flow_match(str(self.scheduler))
        self.reads = "velocity" if self.flow else "score"      # what the objective must learn (pipeline.validate)
        self.reader = f"sampler.scheduler={self.scheduler}"
        self._check_shift()
        try:
            self._setup()
        except (ValueError, ImportError):
            raise
        except Exception as e:      # a scheduler gsm cannot drive (no alphas_cumprod, other prediction types)
            raise ValueError(f"sampler.scheduler must be a VP ε-prediction or FlowMatch scheduler gsm can drive "
                             f"(tested: {', '.join(TESTED)}), got {self.scheduler}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from None

    def _check_shift(self):
        """sampler.shift and sampler.mu: FlowMatch schedulers only; shift > 0 goes into their config; mu (a
        number) if and only if sampler.config.use_dynamic_shifting is true."""
        for key in ("shift", "mu"):
            if getattr(self, key) is not None and not self.flow:
                raise ValueError(f"sampler.{key} must be null for {self.scheduler} (the time shift of the FlowMatch "
                                 f"schedulers: {', '.join(FLOW_MATCH)}), got {getattr(self, key)}")
        if self.shift is not None:
            if "shift" in self.config:
                raise ValueError(f"sampler.config.shift must be unset when sampler.shift is set, got "
                                 f"{self.config['shift']}")
            self.config["shift"] = number("sampler.shift", self.shift, 0, low_open=True)
        dynamic = bool(self.config.get("use_dynamic_shifting", False))
        if self.flow and dynamic != (self.mu is not None):
            got = "null" if self.mu is None else self.mu
            raise ValueError(f"sampler.mu must be {'a number' if dynamic else 'null'} when "
                             f"sampler.config.use_dynamic_shifting is {str(dynamic).lower()}, got {got}")
        if self.mu is not None:
            self.mu = number("sampler.mu", self.mu)

    def _setup(self):
        if self.nfe is not None:
            self.steps = steps_for_nfe(self.scheduler, self.config, self.nfe, self.mu)
        self.template = make_scheduler(self.scheduler, self.config, int(self.steps), self.mu)
        self._module = sys.modules[type(self.template).__module__]
        step_params = inspect.signature(self.template.step).parameters
        for k in self.step_kwargs:
            if k not in step_params or k in ("model_output", "timestep", "sample", "generator", "variance_noise"):
                raise ValueError(f"sampler.step_kwargs.{k} must be an argument of {self.scheduler}.step, got {k}")
        self._variance_noise = "variance_noise" in step_params
        self._generator = "generator" in step_params
        self._dry_run()

    # --------------------------------------------------------------------------- the loop
    def _dry_run(self):
        """The timesteps the loop queries (one model call each), the distinct levels, the noise draws per
        call (counted through randn_tensor), and whether any randomness escapes them."""
        calls, draws = [], []

        def model(x, t):
            calls.append(float(t))
            return torch.zeros_like(x)
        supply = lambda shape: (draws.append(len(calls) - 1), torch.zeros(shape, dtype=F64))[1]
        outs = []
        for seed in (0, 1):
            calls.clear(), draws.clear()
            with _noise_from(self._module, supply) if hasattr(self._module, "randn_tensor") else _nothing():
                outs.append(self._loop(model, torch.ones(1, 1, 1, dtype=F64), seed=seed))
        self.call_timesteps = calls[:]
        uniq = list(dict.fromkeys(calls))                            # distinct, in order of first call
        self.call_level = [uniq.index(t) for t in calls]
        self.level_timesteps = uniq
        self.alphas, self.stds, self.output_scale = self._levels(uniq)
        self.noise_calls = draws[:]
        self.J = len(draws)
        self.init_var = float(getattr(self.template, "init_noise_sigma", 1.0)) ** 2
        hidden = not torch.equal(outs[0], outs[1])
        self.law_method = "particles" if hidden else "deterministic" if self.J == 0 else \
            "variance_noise" if self._variance_noise else "randn_tensor"
        self.stepwise = self.step_outputs if (self.scheduler in HISTORY_FREE and self.J > 0 and not hidden
                                              and len(set(draws)) == self.J) else None

    def _levels(self, timesteps):
        """(α, s, output scale) (L,) at the distinct timesteps: a score scheduler's ᾱ(t), α = √ᾱ, s = √(1 − ᾱ),
        ε̂ = s·A x_in; a FlowMatch one's σ(t), α = 1 − σ, s = σ, u = 1·B x_in (module doc)."""
        if self.flow:
            sigma = torch.tensor([flow_sigma(self.template, t) for t in timesteps], dtype=F64)
            return 1 - sigma, sigma, torch.ones_like(sigma)
        ab = torch.tensor([timestep_level(self.template, t) for t in timesteps], dtype=F64)
        return ab.sqrt(), (1 - ab).sqrt(), (1 - ab).sqrt()

    def _model_input(self, sched, x, t):
        """scale_model_input(x, t) where the scheduler has one (the FlowMatch ones do not: x itself)."""
        return sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x

    def _loop(self, model, x, noise=None, seed=None, generator=None):
        """The sampling loop on x (B, m, n) with model(x_in, t) → ε̂ (noise: see `push`); float64 throughout
        for the FlowMatch schedulers (`Float64Rows`)."""
        sched = copy.deepcopy(self.template)
        if seed is not None and self._generator:
            generator = torch.Generator().manual_seed(seed)
        if self.flow:
            x = x.as_subclass(Float64Rows)
        for i, t in enumerate(sched.timesteps):
            eps = model(self._model_input(sched, x, t), t)
            kw = dict(self.step_kwargs)
            if generator is not None and self._generator:
                kw["generator"] = generator
            if noise is not None and self._variance_noise and i in self.noise_calls:
                kw["variance_noise"] = noise(self.noise_calls.index(i))
            x = sched.step(eps, t, x, **kw).prev_sample
        return x.as_subclass(torch.Tensor)

    def push(self, A: torch.Tensor, x: torch.Tensor, noise=None, generator=None) -> torch.Tensor:
        """Runs the loop on the rows of x (B, m, n) with scores A (B, L, n, n) (ε̂ = s_l x_in A_lᵀ; FlowMatch:
        velocity matrices, u = x_in B_lᵀ); noise(j) is the j-th noise draw (None: the scheduler draws its own
        from `generator`)."""
        A, x = A.to(F64), x.to(F64)
        calls = iter(range(len(self.call_level)))

        def model(xin, t):
            l = self.call_level[next(calls)]
            return float(self.output_scale[l]) * xin @ A[:, l].transpose(-1, -2)
        if noise is None or self._variance_noise or not hasattr(self._module, "randn_tensor"):
            return self._loop(model, x, noise, generator=generator)
        count = iter(range(self.J))
        with _noise_from(self._module, lambda shape: noise(next(count))):
            return self._loop(model, x, noise)

    def step_outputs(self, A: torch.Tensor, x: torch.Tensor, z: torch.Tensor):
        """History-free schedulers: yields, step by step, the step applied to the same fresh rows x (B, m, n)
        with scores A (B, L, n, n) and noise rows z (B, m, n) where the step draws noise."""
        sched = copy.deepcopy(self.template)
        for i, t in enumerate(sched.timesteps):
            l = self.call_level[i]
            eps = float(self.output_scale[l]) * self._model_input(sched, x, t) @ A[:, l].transpose(-1, -2)
            kw = dict(self.step_kwargs)
            if i in self.noise_calls and self._variance_noise:
                kw["variance_noise"] = z
            with _noise_from(self._module, lambda shape: z) if hasattr(self._module, "randn_tensor") else _nothing():
                yield sched.step(eps, t, x, **kw).prev_sample.to(F64)

    # --------------------------------------------------------------------------- the pipeline interface
    def noise_levels(self, sigma=None):
        """α = √ᾱ(t), s = √(1 − ᾱ(t)) at the distinct queried timesteps (FlowMatch: α = 1 − σ(t), s = σ(t),
        the velocity's time 1 − σ as for sampler=flow). train.sigma is not used."""
        return self.alphas.clone(), self.stds.clone()

    def sample(self, model, replicates: int, dim: int, generator=None, device="cpu", progress=False, dtype=F64):
        """M particles per replicate from the scheduler with its own noise, float64: (R, M, d)."""
        x = math.sqrt(self.init_var) * torch.randn(replicates, self.particles, dim, generator=generator, dtype=F64)
        return self.push(model.matrices(), x, generator=generator)

    def covariance(self, A: torch.Tensor) -> torch.Tensor:
        """Exact law (R, L, d, d) → (R, d, d) (law_method particles: the second moment of law_particles)."""
        if self.law_method == "particles":
            x = math.sqrt(self.init_var) * torch.randn(A.shape[0], self.law_particles, A.shape[-1], dtype=F64,
                                                       generator=torch.Generator().manual_seed(12345))
            y = self.push(A, x, generator=torch.Generator().manual_seed(54321))
            return y.transpose(-1, -2) @ y / y.shape[-2]
        return exact_law(self.push, A, self.J, self.init_var, stepwise=self.stepwise)

    def results_extra(self) -> dict:
        """What results.json records about the sampler: law_method, nfe, the queried timesteps."""
        return {"law_method": self.law_method, "nfe": len(self.call_timesteps),
                "scheduler_timesteps": self.call_timesteps}

    def law(self, lam):
        """The push's law map: Opitz' formula and lifted scores through the scheduler's own steps."""
        return PushLaw(self.push, self.J, self.init_var, self.stepwise)

    def prediction_warnings(self, lam, *, n=None, sigma=None) -> list[str]:
        if self.law_method == "particles":
            return [f"{self.scheduler} draws noise gsm cannot intercept: the prediction treats it as deterministic "
                    "and w2_exact comes from law_particles particles"]
        return []

@contextmanager
def _nothing():
    yield
