"""The names users typed before the layout by concern keep working, with a FutureWarning that says where
the contents went: old module imports, old `_target_` paths, `python -m <old module>`, the README's
Python API and the package-level names of gsm.samplers / gsm.theory / gsm.data."""
import subprocess
import sys
import warnings

import pytest

import gsm
from gsm._compat import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_old_module_imports_with_a_warning_and_resolves_its_names(old):
    sys.modules.pop(old, None)
    with pytest.warns(FutureWarning, match=old.replace(".", r"\.") + " is deprecated"):
        module = __import__(old, fromlist=["_"])
    names = [n for n in dir(module) if not n.startswith("__")]
    assert names, old
    for new in MOVED[old]:
        assert new in sys.modules     # dir() looked into every new module


def test_old_names_are_the_new_objects():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from gsm.diffusion import DDPM, diffusion_prediction
        from gsm.experiment import run, summary_table
        from gsm.texture import FourierLinearScore, load_texture
    from gsm.data.texture import load_texture as new_load
    from gsm.pipeline.record import summary_table as new_summary
    from gsm.pipeline.run import run as new_run
    from gsm.samplers.ddpm import DDPM as NewDDPM
    from gsm.scores.fourier import FourierLinearScore as NewFourier
    from gsm.theory.diffusion import diffusion_prediction as new_pred
    assert (DDPM, diffusion_prediction, run, summary_table, FourierLinearScore, load_texture) == \
        (NewDDPM, new_pred, new_run, new_summary, NewFourier, new_load)


def test_readme_api_names():
    from gsm.theory import langevin_prediction
    from gsm.theory.langevin import langevin_prediction as real
    assert langevin_prediction is real
    for name in ("run", "bures_wasserstein2", "make_gaussian", "powerlaw_spectrum", "train_linear_dsm",
                 "langevin_covariance", "LinearScore", "OracleScore", "dsm_optimum", "Langevin", "dsm_loss"):
        assert callable(getattr(gsm, name)), name
    with pytest.raises(AttributeError, match="no attribute"):
        gsm.not_a_name


def test_old_target_path_instantiates(compose_cfg):
    from hydra.utils import instantiate

    from gsm.samplers.ddpm import DDPM
    cfg = compose_cfg("sampler=ddpm", "sampler._target_=gsm.diffusion.DDPM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert type(instantiate(cfg.sampler)) is DDPM


def test_python_dash_m_old_module_runs_the_new_one():
    proc = subprocess.run([sys.executable, "-m", "gsm.report", "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "usage: gsm-report" in proc.stdout
    assert "python -m gsm.report is deprecated: use python -m gsm.cli.report" in proc.stderr
