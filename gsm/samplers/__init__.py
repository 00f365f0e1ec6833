"""Samplers: the `Sampler` interface (`base`), Langevin (ULA), DDPM/DDIM, the VP schemes, EDM and diffusers
schedulers; each linear sampler declares its step map (`gsm.theory.chain.LinearChain`). A sampler is one `Sampler` subclass, named in
the config by `sampler._target_` (docs/extending.md)."""
from gsm._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "gsm.samplers.base": ("Sampler",),
    "gsm.samplers.langevin": ("Langevin", "langevin_sample", "linear_langevin_sample", "gaussian_sample"),
    "gsm.samplers.ddpm": ("DDPM", "DDIM"),
    "gsm.samplers.vp": ("VP",),
    "gsm.samplers.edm": ("EDM",),
    "gsm.samplers.diffusers_scheduler": ("Diffusers",),
})
