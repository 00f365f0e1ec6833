"""`python tools/peak_memory.py <overrides>`: one run's measured peak memory next to gsm.pipeline.memory's estimate,
as one JSON line. Peak: the largest anonymous resident size (RssAnon, sampled every millisecond: arrays
are anonymous memory; ru_maxrss also counts the libraries' file pages, which a busy machine evicts and
the run faults back in) minus the one before the run, after a tiny run of the same pipeline has loaded
every library. ru_maxrss's growth is reported beside it. On CUDA: torch.cuda.max_memory_allocated."""
import json
import resource
import sys
import tempfile
import threading

import torch
from hydra import compose, initialize_config_module

from gsm.pipeline.run import run
from gsm.pipeline.memory import estimate
from gsm.pipeline.spec import RunSpec


def resident_bytes(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


class AnonPeak:
    """The largest RssAnon seen by a thread polling every millisecond while active."""

    def __enter__(self):
        self.peak, self._stop = resident_bytes("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, resident_bytes("RssAnon"))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main(overrides):
    torch.set_num_threads(1)
    pipeline = [o for o in overrides if o.split("=")[0] in ("sampler", "data", "model", "device")]
    tiny = ["replicates=2", "data.size=16" if "data=texture" in overrides else "data.dim=3", "train.steps=10",
            "sampler.steps=2", "sampler.particles=4", "progress=false", *pipeline]
    with initialize_config_module(version_base="1.3", config_module="gsm.conf"):
        cfg = compose(config_name="config", overrides=[*overrides, "progress=false"])
        warm = compose(config_name="config", overrides=tiny)
    cuda = cfg.device == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        run(warm, f"{tmp}/warm")
        before, anon = resident_bytes(), resident_bytes("RssAnon")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with AnonPeak() as peak:
            run(cfg, f"{tmp}/run")
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        measured = torch.cuda.max_memory_allocated() if cuda else peak.peak - anon
    print(json.dumps({"measured": measured, "estimate": estimate(RunSpec.from_config(cfg))["bytes"], "ru_maxrss_growth": maxrss}))


if __name__ == "__main__":
    main(sys.argv[1:])
