"""Theory: the Bures–Wasserstein distance and the prediction of E[W2²], term by term (docs/theory.md):
the linear chains and their laws (`chain`, `law`), the prediction of any linear sampler with any training
objective (`prediction`), ULA in closed form (`langevin`), the Fourier-diagonal case (`fourier`), the
regime verdict (`regime`) and how Gaussian a score is (`probe`)."""
from gsm._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "gsm.theory.bures": ("bures_second_order_weights", "kernel_n", "kernel_m"),
    "gsm.theory.langevin": ("langevin_variance", "complete_homogeneous", "tau_term_from_var", "tau_fourth_order",
                            "langevin_prediction", "langevin_covariance", "ula_chain", "ULALaw"),
    "gsm.theory.chain": ("LinearChain",),
    "gsm.theory.law": ("ChainLaw", "PushLaw"),
    "gsm.theory.prediction": ("linear_prediction", "sampler_prediction"),
    "gsm.theory.probe": ("gaussian_structure", "gaussian_score"),
    "gsm.figures": ("plot_kernels",),
    # 0.1 names, deprecated (FutureWarning on call), removed in 0.3.0
    "gsm.theory.deprecated": ("power_sum", "divided_differences", "dsm_score_matrix", "sgd_variance",
                              "sgd_transient_variance", "sgd_variance_exact"),
    "gsm.training.objectives": ("SGD_INIT", "sgd_mean_square_stable"),
})
