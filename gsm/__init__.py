"""gsm: a PyTorch testbed for the error analysis of score-based sampling in the Gaussian setting.

Layout by concern (docs/architecture.md): `data`, `scores`, `training`, `samplers`, `theory`, `pipeline`,
`cli`. The names below load on first use (PEP 562), so that `gsm` (gsm.cli) is running before torch loads.
"""
from gsm._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "gsm.data.gaussian": ("Gaussian", "custom_spectrum", "isotropic_spectrum", "make_gaussian", "powerlaw_spectrum",
                          "random_orthogonal", "two_level_spectrum"),
    "gsm.pipeline.run": ("run",),
    "gsm.theory.bures": ("bures_wasserstein2", "bures_wasserstein2_commuting", "second_moment"),
    "gsm.scores.linear": ("LinearScore", "OracleScore", "dsm_optimum"),
    "gsm.samplers.langevin": ("Langevin", "langevin_sample", "linear_langevin_sample"),
    "gsm.theory.langevin": ("langevin_covariance",),
    "gsm.training.dsm": ("dsm_loss", "empirical_dsm_minimizer", "train_linear_dsm"),
    "gsm.cli.runs": ("load_runs",),
})
