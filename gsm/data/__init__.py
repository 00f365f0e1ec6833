"""Data: the target Gaussian N(0, Σ) and its spectra (`gaussian`), and stationary textures (`texture`).
A data config group declares its `kind` (gaussian | texture), which picks the pipeline's backend."""
from gsm._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "gsm.data.gaussian": ("powerlaw_spectrum", "isotropic_spectrum", "two_level_spectrum", "custom_spectrum",
                          "file_spectrum", "random_orthogonal", "Gaussian", "make_gaussian"),
})
