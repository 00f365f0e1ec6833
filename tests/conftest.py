import pytest
import torch
from hydra import compose, initialize_config_module


@pytest.fixture
def compose_cfg():
    """compose(overrides) → the resolved config, as the `gsm` command would build it."""
    def _compose(*overrides):
        with initialize_config_module(version_base="1.3", config_module="gsm.conf"):
            return compose(config_name="config", overrides=list(overrides))
    return _compose


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
