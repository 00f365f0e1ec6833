"""gsm: a PyTorch testbed for the error analysis of score-based sampling in the Gaussian setting."""
import importlib

# The names below load on first use (PEP 562), so that `gsm` (gsm.cli) is running before torch loads.
_SOURCES = {
    "gsm.data": ("Gaussian", "custom_spectrum", "isotropic_spectrum", "make_gaussian", "powerlaw_spectrum",
                 "random_orthogonal", "two_level_spectrum"),
    "gsm.experiment": ("run",),
    "gsm.metrics": ("bures_wasserstein2", "bures_wasserstein2_commuting", "second_moment"),
    "gsm.models": ("LinearScore", "OracleScore", "dsm_optimum"),
    "gsm.samplers": ("Langevin", "langevin_covariance", "langevin_sample", "linear_langevin_sample"),
    "gsm.train": ("dsm_loss", "empirical_dsm_minimizer", "train_linear_dsm"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "Gaussian", "custom_spectrum", "isotropic_spectrum", "make_gaussian", "powerlaw_spectrum",
    "random_orthogonal", "two_level_spectrum", "run", "bures_wasserstein2",
    "bures_wasserstein2_commuting", "second_moment", "LinearScore", "OracleScore", "dsm_optimum",
    "Langevin", "langevin_covariance", "langevin_sample", "linear_langevin_sample", "dsm_loss",
    "empirical_dsm_minimizer", "train_linear_dsm",
]


def __getattr__(name):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gsm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_MODULE_OF))
