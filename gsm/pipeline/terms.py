"""What each term of a prediction is and how much of it it makes (the console's, the figures' and
TensorBoard's words), and z with both error bars: the pieces `gsm.pipeline.record` and
`gsm.pipeline.board` share."""
from __future__ import annotations

import math


# what each term of w2_predicted comes from (docs/prediction.md): the console's and the figures' words
TERM_SOURCE = {"noise": "   DSM noise σ (exact score)", "discretization": "   sampler steps (exact score)",
               "mixing": "   finite K from N(0, c₀I)", "t_min": "   the chain stops at t_min",
               "truncation": "   the chain stops at t = ε", "initialization": "   x_T ~ N(0, I), not p_T",
               "bias": "   noise + discretisation (exact score)",
               "transient": "   finite SGD budget", "generalization": "   1/N: score fitted on N samples",
               "optimization": "   τ: SGD fluctuations (+ finite budget)"}
# terms that are parts of another (sgd_mean_offset ⊂ optimization) or not in w2_predicted (particles: 1/M)
SHARE_SHOWN = 1e-4     # terms below 0.01 % of w2_predicted (round-off of an exact term) are left out
NOT_A_SHARE = {"total", "particles", "sgd_mean_offset", "F2", "optimization_second_order"}


def term_shares(results: dict) -> list[tuple[str, float, float]]:
    """(term, value, share of w2_predicted) for the terms that add up to w2_predicted, zero terms left out;
    a remainder the listed terms do not cover (a backend's extra bias keys summed elsewhere) is `other`."""
    total = results.get("w2_predicted")
    terms = results.get("prediction_terms") or {}
    if not total:
        return []
    order = list(TERM_SOURCE)
    names = sorted((k for k in terms if k not in NOT_A_SHARE), key=lambda k: order.index(k) if k in order else len(order))
    parts = [(k, terms[k]) for k in names if abs(terms[k]) > SHARE_SHOWN * abs(total)]
    rest = total - sum(v for _, v in parts)
    if abs(rest) > SHARE_SHOWN * abs(total):
        parts.append(("other", rest))
    return [(k, v, v / total) for k, v in parts]



def z_score(measured: dict, predicted: float | None, error: float | None = None) -> float | None:
    """(measured − predicted)/√(s.e.² + e²): both error bars, the measured mean's s.e. and the prediction's
    own e (`w2_predicted_error`; None: no estimate, the s.e. alone); None without a prediction or a bar."""
    if predicted is None or measured.get("mean") is None:
        return None
    scale = math.hypot(measured.get("stderr") or 0.0, error or 0.0)
    return (measured["mean"] - predicted) / scale if scale > 0 and math.isfinite(scale) else None
