"""Every sampler and backend on CUDA (issue 26): the same config on the CPU and on the GPU, compared
statistically. Skipped without a CUDA GPU.

`GSM_TEST_DEVICE=cpu pytest tests/integration/test_cuda.py` runs both halves on the CPU: it checks that the
configs compose and run, and that the comparison passes between two CPU runs of different seeds, on a
machine without a GPU (it is how these tests were checked where no GPU was lent).

Each case compares the two runs' W2² means within 4 combined standard errors (the tolerance comes from the
replicates each run measures; the seeds differ, so the comparison can fail). A deterministic law (the exact
score: oracle) has no replicate noise, and the two devices must then agree to 1e-8 relative: that is the
float64 law computed on each device.
"""
import math
import os

import pytest
import torch

from gsm.pipeline.run import run

DEVICE = os.environ.get("GSM_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMALL = ["data.dim=4", "data.n=40", "train.steps=400", "progress=false"]
TEXTURE = ["data=texture", "model=fourier_linear", "data.size=16", "data.n=8", "progress=false"]

# name: (overrides, results.json key compared, deterministic law)
CASES = {
    "ddpm": (["sampler=ddpm", "sampler.steps=50", "replicates=16", *SMALL], "w2_exact", False),
    "ddim": (["sampler=ddim", "sampler.steps=20", "replicates=16", *SMALL], "w2_exact", False),
    "vp spectral (oracle)": (["sampler=vp", "model=oracle", "sampler.steps=50", "replicates=1",
                              "sampler.particles_from=none", "sampler.figure=false", *SMALL], "w2_exact", True),
    "vp spectral (solver=exact)": (["sampler=vp", "train.solver=exact", "sampler.steps=50", "replicates=16",
                                    "sampler.particles_from=none", "sampler.figure=false", *SMALL], "w2_exact", False),
    "vp matrix (sgd)": (["sampler=vp", "sampler.spectral=false", "sampler.steps=50", "replicates=16",
                         "sampler.particles=200", "sampler.figure=false", *SMALL], "w2_exact", False),
    "edm": (["sampler=edm", "train.solver=exact", "replicates=16", "sampler.particles=200", *SMALL], "w2_exact", False),
    "diffusers": (["sampler=diffusers", "sampler.steps=10", "replicates=16", "sampler.particles=200", *SMALL],
                  "w2_exact", False),
    "texture": ([*TEXTURE, "replicates=8"], "w2_exact", False),
    "neural (mlp)": (["model=mlp", "model.width=16", "sampler.steps=50", "replicates=8", "sampler.particles=500",
                      *SMALL], "w2_empirical", False),
    "flow (oracle)": (["objective=cfm", "sampler=flow", "model=oracle", "sampler.scheme=heun", "sampler.steps=10",
                       "replicates=1", "sampler.particles=200", *SMALL], "w2_exact", True),
    "flow (solver=exact)": (["objective=cfm", "sampler=flow", "train.solver=exact", "sampler.scheme=euler",
                             "sampler.steps=10", "replicates=16", "sampler.particles=200", *SMALL], "w2_exact", False),
    "flow (cfm-sgd)": (["objective=cfm", "sampler=flow", "sampler.scheme=heun", "sampler.steps=5", "replicates=16",
                        "sampler.particles=200", *SMALL], "w2_exact", False),
    "flow (mlp)": (["objective=cfm", "sampler=flow", "model=mlp", "model.width=16", "sampler.scheme=heun",
                    "sampler.steps=5", "replicates=8", "sampler.particles=500", *SMALL], "w2_empirical", False),
    "diffusers FlowMatchEuler (cfm-sgd)": (["objective=cfm", "sampler=diffusers",
                                            "sampler.scheduler=FlowMatchEulerDiscreteScheduler", "sampler.shift=3",
                                            "sampler.steps=10", "replicates=16", "sampler.particles=200", *SMALL],
                                           "w2_exact", False),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_backend_on_cuda_matches_the_cpu(compose_cfg, tmp_path, name):
    overrides, key, deterministic = CASES[name]
    cpu = run(compose_cfg(*overrides, "device=cpu", "seed=1"), tmp_path / "cpu")
    dev = run(compose_cfg(*overrides, f"device={DEVICE}", "seed=2"), tmp_path / "dev")
    assert cpu["status"] == "ok" and dev["status"] == "ok", (cpu["status"], dev["status"], dev.get("warnings"))
    a, b = cpu[key], dev[key]
    if deterministic:
        assert b["mean"] == pytest.approx(a["mean"], rel=1e-8)
    else:
        se = math.hypot(a["stderr"], b["stderr"])
        assert se > 0 and abs(a["mean"] - b["mean"]) < 4 * se, (a, b)
    if key == "w2_exact":       # the prediction is a function of the spectrum and the config: the same on both
        assert dev["w2_predicted"] == pytest.approx(cpu["w2_predicted"], rel=1e-8)
