"""Theory: the Bures–Wasserstein distance and the closed-form predictions of E[W2²], term by term
(docs/theory.md): Langevin (`langevin`), the SGD fluctuations (`sgd`), DDPM/DDIM (`diffusion`), any linear
chain (`linear_chain`), the VP schemes (`vp`), the Fourier-diagonal case (`fourier`) and the regime verdict
(`regime`). The names below are those of the former gsm/theory.py, kept at the package level."""
from gsm._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "gsm.theory.langevin": ("langevin_variance", "divided_differences", "bures_second_order_weights", "kernel_n",
                            "kernel_m", "power_sum", "tau_term_from_var", "second_order_contraction",
                            "tau_fourth_order", "langevin_prediction"),
    "gsm.theory.sgd": ("SGD_INIT", "dsm_score_matrix", "sgd_variance", "sgd_mean_square_stable", "sgd_variance_exact",
                       "sgd_transient_variance"),
    "gsm.figures": ("plot_kernels",),
})
