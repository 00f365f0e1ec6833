"""Training objectives: what the score model is fitted to at each noise level the sampler reads."""
from __future__ import annotations


class DSM:
    """Denoising score matching; its score-error model is filled in by the prediction work."""


OBJECTIVES = {"dsm": DSM}
