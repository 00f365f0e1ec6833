"""Old `_target_` strings in users' configs (0.1 series), kept for one release (0.2.x) with a FutureWarning.

A config written for 0.1 names its classes by the flat module paths of that series, e.g.
`sampler._target_: gsm.diffusion.DDPM` or `model._target_: gsm.models.LinearScore`. Those modules are gone
in 0.2.0 (CHANGELOG.md); the entry point rewrites such a value to the class's current path before the run
reads the config. Nothing here is an import hook: `import gsm.diffusion` fails, only config values are
translated. To be removed in 0.3.0.
"""
from __future__ import annotations

import importlib
import warnings

# old module → the modules of 0.2 that hold its contents, searched in order for the target's name
# (the same table as CHANGELOG.md, "Removed module paths")
OLD_MODULES = {
    "gsm.advise": ("gsm.cli.advise",),
    "gsm.chain": ("gsm.theory.chain", "gsm.theory.law"),
    "gsm.diffusers_sampler": ("gsm.samplers.diffusers_scheduler",),
    "gsm.diffusion": ("gsm.samplers.ddpm", "gsm.samplers.reverse_chain"),
    "gsm.edm": ("gsm.samplers.edm",),
    "gsm.experiment": ("gsm.pipeline.run", "gsm.pipeline.record", "gsm.pipeline.matrix"),
    "gsm.interrupt": ("gsm.pipeline.interrupt",),
    "gsm.job": ("gsm.cli.job",),
    "gsm.linear_law": ("gsm.theory.chain", "gsm.theory.law"),
    "gsm.memory": ("gsm.pipeline.memory",),
    "gsm.metrics": ("gsm.theory.bures",),
    "gsm.models": ("gsm.scores.linear",),
    "gsm.nets": ("gsm.scores.nets", "gsm.theory.bures"),
    "gsm.pg_report": ("gsm.cli.pg_report",),
    "gsm.prefetch": ("gsm.training.prefetch",),
    "gsm.regime": ("gsm.theory.regime",),
    "gsm.report": ("gsm.cli.report",),
    "gsm.schedulers_report": ("gsm.cli.schedulers_report",),
    "gsm.status": ("gsm.pipeline.status",),
    "gsm.texture": ("gsm.data.texture", "gsm.theory.fourier", "gsm.scores.fourier", "gsm.training.fourier",
                    "gsm.samplers.fourier"),
    "gsm.texture_pipeline": ("gsm.pipeline.texture",),
    "gsm.train": ("gsm.training.dsm",),
    "gsm.validate": ("gsm.pipeline.validate",),
    "gsm.vp": ("gsm.samplers.vp", "gsm.samplers.vp_schemes"),
    "gsm.vp_pipeline": ("gsm.pipeline.spectral",),
}


def current_target(target: str) -> str | None:
    """The 0.2 path of an old `_target_` string (`gsm.diffusion.DDPM` → `gsm.samplers.ddpm.DDPM`), or None
    when `target` is not under an old module or its name is found in none of the new ones."""
    old, _, name = target.rpartition(".")
    if old not in OLD_MODULES:
        return None
    for new in OLD_MODULES[old]:
        if hasattr(importlib.import_module(new), name):
            return f"{new}.{name}"
    return None


def update_targets(cfg) -> list[str]:
    """Rewrites, in place, every `_target_` of the config (a DictConfig, nested) that names an old path,
    with a FutureWarning each; returns the rewritten keys."""
    from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

    done = []

    def walk(node, where: str):
        if isinstance(node, DictConfig):
            for key, value in node.items_ex(resolve=False):      # interpolations and ??? stay unresolved
                if key == "_target_" and isinstance(value, str):
                    rewrite(node, where, value)
                else:
                    walk(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, ListConfig):
            for i in range(len(node)):
                if not (OmegaConf.is_missing(node, i) or OmegaConf.is_interpolation(node, i)):
                    walk(node[i], f"{where}[{i}]")

    def rewrite(node, where: str, old: str):
        new = current_target(old)
        if new is None:
            return
        key = f"{where}._target_" if where else "_target_"
        warnings.warn(f"{key}={old} is a 0.1 module path, removed in 0.2.0: use {new} "
                      "(CHANGELOG.md; the old name is accepted until 0.3.0)", FutureWarning, stacklevel=3)
        with open_dict(node):
            node["_target_"] = new
        done.append(key)

    walk(cfg, "")
    return done
