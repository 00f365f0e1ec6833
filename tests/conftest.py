import os

import pytest
import torch
from hydra import compose, initialize_config_module


@pytest.fixture
def compose_cfg():
    """compose(overrides) → the resolved config, as the `gsm` command would build it, with `figures=false`
    unless the overrides set `figures`: drawing is 60–85 % of a tiny run's time, and nothing but the figures
    depends on it (tests/integration/test_tensorboard.py: the numbers are the same). The tests that look at
    images ask for them, and test_every_backend_draws_its_figures draws each backend's."""
    def _compose(*overrides):
        if not any(o.lstrip("+~").split("=")[0] == "figures" for o in overrides):
            overrides = ("figures=false", *overrides)
        with initialize_config_module(version_base="1.3", config_module="gsm.conf"):
            return compose(config_name="config", overrides=list(overrides))
    return _compose


# Under pytest-xdist (`-n auto`, one worker per core) each worker keeps to one intra-op thread: several
# threads per worker would oversubscribe the cores, and small batched ops then wait on each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def one_thread():
    """One intra-op thread for small batched ops: with several, each op waits for every thread, which
    on a busy 2-core machine makes them ~10× slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def gsm_script() -> str:
    """The `gsm` console script beside this Python (the installed one), else on PATH; the test is skipped
    when neither exists (the package is imported but not installed)."""
    import os
    import shutil
    import sys
    exe = shutil.which("gsm", path=os.path.dirname(sys.executable)) or shutil.which("gsm")
    if exe is None:
        pytest.skip("the gsm console script is not installed")
    return exe


def pytest_collection_modifyitems(config, items):
    """Slow tests first (a stable sort): under pytest-xdist the long ones then start early and the short ones
    fill both workers at the end, instead of one long test running alone while the other worker idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
