"""Data: the target Gaussian N(0, Σ) and its spectra (`gaussian`), stationary textures (`texture`) and
Gaussian mixtures (`mixture`, not Gaussian) and real data as finite pools (`pool`: digits, image patches). A
data config group declares its `kind` (gaussian | texture | mixture | dataset), which picks the pipeline's backend."""
from gsm._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "gsm.data.gaussian": ("powerlaw_spectrum", "isotropic_spectrum", "two_level_spectrum", "custom_spectrum",
                          "file_spectrum", "random_orthogonal", "Gaussian", "make_gaussian"),
    "gsm.data.mixture": ("GaussianMixture", "two_clusters", "random_means", "mixture_family"),
    "gsm.data.pool": ("SamplePool", "load_digits", "load_patches"),
})
