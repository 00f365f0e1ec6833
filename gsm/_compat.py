"""The module names of gsm before the layout by concern (issue 14), kept importable with a FutureWarning.

`from gsm.diffusion import DDPM`, `_target_: gsm.experiment.run`, ... still work: importing an old name
gives a module whose attributes are looked up, in order, in the modules that now hold its contents.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED = {
    "gsm.advise": ("gsm.cli.advise",),
    "gsm.chain": ("gsm.samplers.linear_chain", "gsm.theory.linear_chain",),
    "gsm.diffusers_sampler": ("gsm.samplers.diffusers_scheduler",),
    "gsm.diffusion": ("gsm.samplers.reverse_chain", "gsm.theory.sgd", "gsm.theory.diffusion", "gsm.samplers.ddpm",),
    "gsm.edm": ("gsm.samplers.edm",),
    "gsm.experiment": ("gsm.pipeline.run", "gsm.pipeline.record", "gsm.pipeline.matrix"),
    "gsm.interrupt": ("gsm.pipeline.interrupt",),
    "gsm.job": ("gsm.cli.job",),
    "gsm.linear_law": ("gsm.theory.linear_chain", "gsm.samplers.linear_chain",),
    "gsm.memory": ("gsm.pipeline.memory",),
    "gsm.metrics": ("gsm.theory.bures",),
    "gsm.models": ("gsm.scores.linear",),
    "gsm.nets": ("gsm.scores.nets", "gsm.theory.bures",),
    "gsm.pg_report": ("gsm.cli.pg_report",),
    "gsm.prefetch": ("gsm.training.prefetch",),
    "gsm.regime": ("gsm.theory.regime",),
    "gsm.report": ("gsm.cli.report",),
    "gsm.schedulers_report": ("gsm.cli.schedulers_report",),
    "gsm.status": ("gsm.pipeline.status",),
    "gsm.texture": ("gsm.data.texture", "gsm.theory.fourier", "gsm.scores.fourier", "gsm.training.fourier", "gsm.samplers.fourier",),
    "gsm.texture_pipeline": ("gsm.pipeline.texture",),
    "gsm.train": ("gsm.training.dsm",),
    "gsm.validate": ("gsm.pipeline.validate",),
    "gsm.vp": ("gsm.samplers.vp", "gsm.samplers.vp_schemes", "gsm.theory.vp", "gsm.figures",),
    "gsm.vp_pipeline": ("gsm.pipeline.spectral",),
}


class _MovedModule(types.ModuleType):
    """An old module: each attribute comes from the first new module that defines it."""

    def __getattr__(self, name):
        for new in MOVED[self.__name__]:
            module = importlib.import_module(new)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def __dir__(self):
        return sorted({n for new in MOVED[self.__name__] for n in dir(importlib.import_module(new))})


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} is deprecated; its contents moved to {', '.join(MOVED[spec.name])} "
                      "(docs/architecture.md)", FutureWarning, stacklevel=2)
        return _MovedModule(spec.name)

    def exec_module(self, module):
        pass

    def is_package(self, fullname):
        return False

    def get_code(self, fullname):
        """`python -m <old name>` (runpy) runs the module that now holds it, e.g. gsm.report → gsm.cli.report."""
        warnings.warn(f"python -m {fullname} is deprecated: use python -m {MOVED[fullname][0]}", FutureWarning,
                      stacklevel=2)
        new = MOVED[fullname][0]
        return importlib.util.find_spec(new).loader.get_code(new)


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
