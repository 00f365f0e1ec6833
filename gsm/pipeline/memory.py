"""A run's peak memory, estimated from its specification before anything is allocated (docs/robustness.md).

`check_memory(spec)` (called by `gsm.pipeline.run.run` right after validation) compares the estimate with
the cap: `max_memory_gb` when set, else the memory available now (host RAM: MemAvailable; CUDA: the
device's free memory). Above it, a one-line ConfigError (exit status 2) gives the estimate, the cap and
the knobs that drive the largest terms, before any work.

The estimate counts the arrays of each stage (bytes; R = replicates, N = data.n, d = data.dim, b =
train.batch_size, c = min(256, train.steps) SGD steps drawn per chunk, M = sampler.particles, L =
noise levels, e = bytes of the training dtype, 8 for float64): the data (float64), the score matrices,
the SGD chunk's draws, the sampler's law and particles and the evaluation's copies. What lives through
the run (data, score) adds to the largest stage. Coefficients count the live copies in the code
(measured: tests/unit/test_memory.py checks measured ≤ estimate ≤ 2 × measured on a few configs).
"""
from __future__ import annotations

from pathlib import Path

from gsm.pipeline.kinds import backend_name
from gsm.pipeline.spec import ConfigError, RunSpec, as_config_error

GB = 1e9
CHUNK = 256               # steps drawn at once by the trainers (gsm.train, gsm.texture)
BASE = 64e6               # small arrays, allocator slack


def _term(name: str, nbytes: float, knobs: str) -> dict:
    return {"name": name, "bytes": float(nbytes), "knobs": knobs}


def dtype_bytes(spec: RunSpec) -> int:
    """e: bytes of a number in the training dtype."""
    return 8 if spec.settings.dtype == "float64" else 4


def full_matrix_terms(spec: RunSpec, d: int, levels: int, background: bool) -> tuple[list, list]:
    """(persistent terms, stages) of the d-dimensional pipeline; a stage is a list of terms alive together.

    linear: the model class declares a linear score (`ScoreModel.linear`); learned: DSM-SGD trains it
    (train.solver=sgd and the class `requires_training`); L = levels; bg = 1 with background draws, else 0;
    c = min(256, steps); D = 2(1 + bg) + 2 draws per SGD step for L = 1, (1 + bg) + 3 for L > 1;
    W = model.width (default 4d), depth (default 2). Bytes:

    | term | bytes | when |
    |---|---|---|
    | data (float64) | R·N·d·8 | always, persistent |
    | data in the training dtype | R·N·d·e | learned and e < 8, persistent |
    | score matrices | R·L·d²·(e if learned else 8) | linear, persistent |
    | drawing the data | 2·R·N·d·8 | always |
    | SGD chunk draws | c·R·b·(D·d·e + 8) | learned and linear |
    | SGD batch | R·b·e·(4d + 4W) | learned, not linear |
    | the sampler's exact law | 12·R·d²·8 | linear |
    | the prediction | 180·d²·8 | linear |
    | particles | 4·R·M·d·8 (linear, sampler.particles_from=law); else R·M·d·e·(4 + bg) + 9·R·M·d, plus R·M·e·W·(depth + 1) when not linear | always, with the evaluation |
    | evaluation | R·d²·8·(10 + 10·min(L, 51) if L > 1 else 10) | always, with the particles |
    """
    R, N = spec.settings.replicates, spec.data.n
    e = dtype_bytes(spec)
    b, steps = spec.train.batch_size, spec.train.steps
    M = int(spec.sampler.particles)
    linear = spec.model.linear
    learned = spec.train.solver == "sgd" and spec.model.requires_training
    keep = [_term("data (float64)", R * N * d * 8, "replicates, data.n, data.dim"),
            _term("data in the training dtype", R * N * d * e if learned and e < 8 else 0, "replicates, data.n, data.dim"),
            _term("score matrices", R * levels * d * d * (e if learned else 8) if linear else 0,
                  "replicates, data.dim, sampler levels")]
    c = min(CHUNK, steps)
    draws = 2 * (1 + background) + 2 if levels == 1 else (1 + background) + 3
    stages = [[_term("drawing the data", 2 * R * N * d * 8, "replicates, data.n, data.dim")]]
    if learned and linear:
        stages.append([_term("SGD chunk draws", c * R * b * (draws * d * e + 8), "replicates, train.batch_size, data.dim")])
    if learned and not linear:      # a network's DSM-SGD batch, one step at a time
        width = int(spec.model.options.get("width", 4 * d))
        stages.append([_term("SGD batch", R * b * e * (4 * d + 4 * width), "replicates, train.batch_size, model.width")])
    if linear:
        stages.append([_term("the sampler's exact law (d×d per replicate)", R * d * d * 8 * 12, "replicates, data.dim")])
        # the prediction (gsm.theory): ~180 d×d float64 arrays at once, whatever R (measured at d = 1000)
        stages.append([_term("the prediction (d×d)", 180 * d * d * 8, "data.dim")])
    chains = R * M * d * e * (4 + background) + R * M * d * 9      # chains; float64 copy + mask for W2
    if not linear:      # a network's activations on the M particles: width units per hidden layer
        width, depth = int(spec.model.options.get("width", 4 * d)), int(spec.model.options.get("depth", 2))
        chains += R * M * e * width * (depth + 1)
    from_law = getattr(spec.sampler, "particles_from", None) == "law" and linear
    # beside the particles: the law, the particles' second moment and the Bures eigh; DDPM/DDIM also
    # log W2² along the reverse trajectory (≤ 51 levels)
    evaluation = R * d * d * 8 * (10 + (10 * min(levels, 51) if levels > 1 else 0))
    stages.append([_term("particles", R * M * d * 8 * 4 if from_law else chains, "replicates, sampler.particles, data.dim"),
                   _term("evaluation (d×d per replicate" + (" and level)" if levels > 1 else ")"), evaluation,
                         "replicates, data.dim" + (", sampler.steps" if levels > 1 else ""))])
    return keep, stages


def texture_terms(spec: RunSpec, size: int, levels: int) -> tuple[list, list]:
    """(persistent terms, stages) of the Fourier-diagonal texture pipeline (d = size²)."""
    R, N, n = spec.settings.replicates, spec.data.n, int(size)
    e = dtype_bytes(spec)
    h = n * (n // 2 + 1)
    b, steps, M = spec.train.batch_size, spec.train.steps, int(spec.sampler.particles)
    keep = [_term("data spectra (complex128)", R * N * h * 16, "replicates, data.n, data.size")]
    c = min(CHUNK, steps)
    stages = [[_term("drawing the data", R * N * n * n * 8 * 2, "replicates, data.n, data.size")],
              [_term("SGD chunk draws", c * R * b * (n * n * e + 5 * h * 2 * e + 8), "replicates, train.batch_size, data.size")],
              [_term("sampler particles", R * M * (n * n * e * 3 + h * 2 * e * 3 + h * 8) + R * levels * h * 8 * 4,
                     "replicates, sampler.particles, data.size")]]
    return keep, stages


def spectral_terms(spec: RunSpec, d: int, levels: int) -> tuple[list, list]:
    """The per-eigenvalue backend: one replicate at a time, ~20 d×d float64 arrays (Σ̂, its eigenvectors
    and LAPACK workspace, the law, the Bures matrix, the prediction's d×d kernels), the level scores
    (L, d) and M particles (×4)."""
    M = int(spec.sampler.particles)
    return [], [[_term("per-eigenvalue path: d×d arrays of one replicate and the prediction", 20 * d * d * 8,
                       "data.dim"),
                 _term("level scores and particles", (2 * levels * d + 4 * M * d) * 8,
                       "data.dim, sampler.steps, sampler.particles")]]


def estimate(spec: RunSpec) -> dict:
    """{"bytes": the peak estimate, "terms": [{name, bytes, knobs}] largest first}."""
    from gsm.training.prefetch import background_draws
    levels = int(spec.sampler.noise_levels(float(spec.train.sigma))[0].numel())
    device = "cuda" if spec.settings.device == "cuda" else "cpu"
    with as_config_error("sampler"):      # e.g. sampler=vp scheme=sde off its per-eigenvalue path
        backend = backend_name(spec)
    if backend == "texture":
        keep, stages = texture_terms(spec, spec.data.size, levels)
    elif backend == "spectral":
        keep, stages = spectral_terms(spec, spec.data.dim, levels)
    else:
        R, b, d = spec.settings.replicates, spec.train.batch_size, spec.data.dim
        bg = background_draws(device, R * min(CHUNK, spec.train.steps) * b * d)
        keep, stages = full_matrix_terms(spec, d, levels, bg)
    return peak(keep, stages)


def peak(keep: list, stages: list) -> dict:
    """BASE + the persistent terms + the largest stage, with every term listed largest first."""
    top = max(sum(t["bytes"] for t in stage) for stage in stages)
    total = BASE + sum(t["bytes"] for t in keep) + top
    return {"bytes": total, "terms": sorted(keep + [t for stage in stages for t in stage], key=lambda t: -t["bytes"])}


def available_bytes(device: str):
    """(bytes, where): free memory of the CUDA device, or the host's MemAvailable (None if unknown)."""
    if device == "cuda":
        import torch
        if torch.cuda.is_available():
            return float(torch.cuda.mem_get_info()[0]), "free on the CUDA device"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024, "available host RAM"
    except OSError:
        pass
    return None, "unknown"


def check_memory(spec: RunSpec) -> dict:
    """Raises ConfigError when the estimate exceeds the cap (module doc); returns the estimate with
    `cap_bytes` and `cap` (where the cap comes from). max_memory_gb was checked by `RunSettings`."""
    est = estimate(spec)
    knob = spec.settings.max_memory_gb
    if knob is not None:
        cap, where = float(knob) * GB, "max_memory_gb"
    else:
        cap, where = available_bytes("cuda" if spec.settings.device in ("cuda", "auto") else "cpu")
    est.update(cap_bytes=cap, cap=where)
    if cap is not None and est["bytes"] > cap:
        big = [t for t in est["terms"] if t["bytes"] >= 0.25 * est["terms"][0]["bytes"]]
        drivers = "; ".join(f"{t['name']} {t['bytes'] / GB:.3g} GB ({t['knobs']})" for t in big)
        raise ConfigError(f"the run needs an estimated {est['bytes'] / GB:.3g} GB of memory, more than the "
                          f"{cap / GB:.3g} GB {where}: lower the knobs of its largest arrays — {drivers} — "
                          "or raise the cap with max_memory_gb=<GB>")
    return est
