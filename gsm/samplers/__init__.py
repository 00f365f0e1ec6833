"""Samplers: the `Sampler` interface (`base`), Langevin (ULA), DDPM/DDIM, VP schemes, EDM and diffusers
schedulers, and the linear chains that give their exact laws."""
from gsm._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "gsm.samplers.langevin": ("langevin_sample", "linear_langevin_sample", "lyapunov_sum", "discrete_lyapunov", "langevin_covariance", "langevin_unstable", "gaussian_sample", "Langevin",),
})
