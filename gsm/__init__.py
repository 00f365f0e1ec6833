"""gsm: a PyTorch testbed for the error analysis of score-based sampling in the Gaussian setting."""
from gsm.data import (Gaussian, custom_spectrum, isotropic_spectrum, make_gaussian, powerlaw_spectrum,
                      random_orthogonal, two_level_spectrum)
from gsm.experiment import run
from gsm.metrics import bures_wasserstein2, bures_wasserstein2_commuting, second_moment
from gsm.models import LinearScore, OracleScore, dsm_optimum
from gsm.samplers import Langevin, langevin_covariance, langevin_sample, linear_langevin_sample
from gsm.train import dsm_loss, empirical_dsm_minimizer, train_linear_dsm

__all__ = [
    "Gaussian", "custom_spectrum", "isotropic_spectrum", "make_gaussian", "powerlaw_spectrum",
    "random_orthogonal", "two_level_spectrum", "run", "bures_wasserstein2",
    "bures_wasserstein2_commuting", "second_moment", "LinearScore", "OracleScore", "dsm_optimum",
    "Langevin", "langevin_covariance", "langevin_sample", "linear_langevin_sample", "dsm_loss",
    "empirical_dsm_minimizer", "train_linear_dsm",
]
