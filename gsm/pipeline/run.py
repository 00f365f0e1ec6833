"""The pipeline: N samples of N(0, Σ) → score fitted by DSM → sampler → W2² against the target.

`run(cfg, output_dir)` is a plain function (tests call it directly); `gsm.cli.main` wraps it in Hydra.
It is the only place that reads the DictConfig: it builds the run's typed objects once
(`gsm.pipeline.spec.RunSpec`), validates them (`gsm.pipeline.validate`, `gsm.pipeline.memory`), picks the
backend (`backend_for`) and runs the stages once (`run_stages`), each of them on the spec.
Every stage is batched over R independent replicates; evaluation is in float64. SIGINT/SIGTERM
during a run leave results.json with status `interrupted` (docs/robustness.md).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from gsm.figures import run_title, set_figures, set_run_title
from gsm.pipeline.backend import Backend
from gsm.pipeline.dataset import DatasetLinearBackend, DatasetNeuralBackend
from gsm.pipeline.interrupt import SummaryWriter, deferred, interruptible
from gsm.pipeline.kinds import backend_name
from gsm.pipeline.matrix import MatrixBackend, NeuralBackend
from gsm.pipeline.memory import check_memory
from gsm.pipeline.mixture import MixtureLinearBackend, MixtureNeuralBackend
from gsm.pipeline.record import mean_stderr, record_failure, record_scale, recorded, start, summary_table
from gsm.pipeline.spectral import SpectralBackend
from gsm.pipeline.spec import ConfigError, RunSpec, as_config_error
from gsm.pipeline.texture import TextureBackend
from gsm.pipeline.validate import validate

BACKENDS = {"matrix": MatrixBackend, "neural": NeuralBackend, "spectral": SpectralBackend,
            "texture": TextureBackend, "mixture_linear": MixtureLinearBackend, "mixture_neural": MixtureNeuralBackend,
            "dataset_linear": DatasetLinearBackend, "dataset_neural": DatasetNeuralBackend}


def run(cfg: DictConfig, output_dir) -> dict:
    """Runs one experiment (R replicates) and returns the results dict also written to results.json.

    Raises gsm.pipeline.validate.ConfigError (nothing written) for a bad config or one whose estimated
    memory exceeds the cap (`gsm.pipeline.memory`); KeyboardInterrupt (SIGINT) or `Terminated` (SIGTERM)
    after writing results.json with status `interrupted`; any other exception after writing status
    `failed` with its type and message (`error`)."""
    with interruptible():
        with deferred():     # OmegaConf is not safe to interrupt: a signal here is raised once the config is read
            spec = RunSpec.from_config(cfg)     # every group built once, by its own checked constructor
            checks = validate(spec)
            check_memory(spec)          # the estimated peak against the memory available (or max_memory_gb)
        before, threads = torch.get_num_threads(), spec.settings.threads
        if threads == "auto":
            torch.set_num_threads(auto_threads(spec))
        elif threads:     # small batched ops on a busy machine: extra threads wait on each other
            torch.set_num_threads(int(threads))
            before = None            # an explicit setting stays for the process
        try:
            return _run_or_record_failure(spec, output_dir, checks)
        finally:
            if before is not None:
                torch.set_num_threads(before)


AUTO_THREADS_MIN_DIM = 1024     # below: 1 intra-op thread (gsm.bench pipelines, docs/performance.md)
AUTO_THREADS_MIN_SIZE = 256     # textures: the image side


def auto_threads(spec: RunSpec) -> int:
    """threads=auto: 1 intra-op thread for small problems, all cores for large ones. Every parallel torch op
    ends at a barrier; on a busy machine a descheduled thread holds it for a scheduler time slice, so
    the many small ops of a small-d run get up to ~10× slower with 2 threads, for ≤ 10 % gained when idle;
    on the shared 2-core machine 2 threads lost at d = 64, 512 and 64×64 textures. Large d×d products
    gain ~2× from 2 idle cores. Set by size only, so that results do not depend on the machine's load."""
    data = spec.data
    large = data.size >= AUTO_THREADS_MIN_SIZE if data.kind == "texture" else data.dim >= AUTO_THREADS_MIN_DIM
    return (os.cpu_count() or 1) if large else 1


def _run_or_record_failure(spec: RunSpec, output_dir, checks: list) -> dict:
    try:
        return run_stages(spec, output_dir, checks)
    except ConfigError:
        raise
    except Exception as e:
        record_failure(Path(output_dir), spec.config, checks, e)
        raise


def backend_for(spec: RunSpec, results: dict, warn) -> Backend:
    """The backend of this run: `texture` (data.kind=texture), `mixture_linear` | `mixture_neural`
    (data.kind=mixture), `dataset_linear` | `dataset_neural` (data.kind=dataset), `spectral` (the sampler's per-eigenvalue path, for a score that is a function of Σ
    or Σ̂), `matrix` (a linear score) or `neural`."""
    with as_config_error("sampler"):
        name = backend_name(spec)
    return BACKENDS[name](spec, results, warn)


def run_stages(spec: RunSpec, output_dir, checks: list) -> dict:
    """data → score → sample → evaluate → predict → record → log, through the run's backend."""
    t0 = time.time()
    out, results, warn = start(spec.config, output_dir, checks)
    backend = backend_for(spec, results, warn)
    writer = SummaryWriter(log_dir=str(out / "tb"))
    set_figures(writer, spec.settings.figures)      # the samplers' own figures too (`Sampler.log_extra`)
    with recorded(writer, results, t0, out):
        data = backend.draw_data()                  # 1. R independent data sets of N samples
        fit = backend.fit_score(data, writer)       # 2. the score at the sampler's noise levels
        if not backend.sample(fit):                 # 3. exact law and particles (none stable: `diverged`)
            return results
        backend.evaluate()                          # 4. W2² of the law and of the particles
        record_scale(results, backend.trace_sigma())  #    and on the data's scale, W2²/tr Σ
        pred = backend.predict()                    # 5. the theory, term by term
        backend.record(pred)                        #    prediction terms and the regime verdict
        results["status"] = "ok"
        set_run_title(writer, run_title(results))   #    every figure's title: parameters, measured and predicted W2²
        backend.log(writer, pred)                   # 6. TensorBoard scalars and figures
    return results


__all__ = ["run", "run_stages", "backend_for", "auto_threads", "summary_table", "mean_stderr"]
