"""Lazy re-exports (PEP 562): a package names what its modules define without importing them, so that
`import gsm.samplers.langevin` loads only that module's own imports, `gsm` starts before torch loads,
and no import cycle can pass through a package's __init__."""
from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, sources: dict[str, tuple[str, ...]]):
    """(__getattr__, __dir__, __all__) for `package`, whose public names are sources[module] for each
    module. A name is imported from its module on first use and then kept in the package."""
    module_of = {name: module for module, names in sources.items() for name in names}

    def __getattr__(name):
        if name in module_of:
            value = getattr(importlib.import_module(module_of[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(module_of))

    return __getattr__, __dir__, sorted(module_of)
