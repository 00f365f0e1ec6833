"""0.2.0 removed the flat module paths of the 0.1 series (CHANGELOG.md): importing one fails with a clean
ModuleNotFoundError, `python -m <old module>` fails, and no import hook is left. What users type keeps
working: the README's Python API and, for one release, an old `_target_` string in a config (rewritten by
the entry point to the class's new path, with a FutureWarning)."""
import importlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import gsm

ROOT = Path(__file__).resolve().parents[2]

# the 0.1 modules that 0.2.0 removed, written out here (not read from gsm): CHANGELOG.md lists each
REMOVED = ("gsm.advise", "gsm.chain", "gsm.diffusers_sampler", "gsm.diffusion", "gsm.edm", "gsm.experiment",
           "gsm.interrupt", "gsm.job", "gsm.linear_law", "gsm.memory", "gsm.metrics", "gsm.models", "gsm.nets",
           "gsm.pg_report", "gsm.prefetch", "gsm.regime", "gsm.report", "gsm.schedulers_report", "gsm.status",
           "gsm.texture", "gsm.texture_pipeline", "gsm.train", "gsm.validate", "gsm.vp", "gsm.vp_pipeline")

# `_target_` strings of the 0.1 configs (conf/ of 0.1.0) and the classes they name in 0.2
OLD_TARGETS = {
    "gsm.diffusion.DDPM": "gsm.samplers.ddpm.DDPM",
    "gsm.diffusion.DDIM": "gsm.samplers.ddpm.DDIM",
    "gsm.diffusers_sampler.Diffusers": "gsm.samplers.diffusers_scheduler.Diffusers",
    "gsm.edm.EDM": "gsm.samplers.edm.EDM",
    "gsm.vp.VP": "gsm.samplers.vp.VP",
    "gsm.models.LinearScore": "gsm.scores.linear.LinearScore",
    "gsm.models.OracleScore": "gsm.scores.linear.OracleScore",
    "gsm.nets.MLPScore": "gsm.scores.nets.MLPScore",
    "gsm.texture.FourierLinearScore": "gsm.scores.fourier.FourierLinearScore",
}


@pytest.mark.parametrize("old", REMOVED)
def test_removed_module_raises_module_not_found(old):
    sys.modules.pop(old, None)
    with pytest.raises(ModuleNotFoundError, match=f"No module named '{old}'"):
        importlib.import_module(old)


def test_no_import_hook_and_no_compat_module():
    """`import gsm` loads gsm and gsm._lazy only and installs no finder; gsm/_compat.py is gone."""
    code = ("import sys; before = list(sys.meta_path); import gsm; "
            "print(sorted(m for m in sys.modules if m.startswith('gsm')), sys.meta_path == before)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["['gsm',", "'gsm._lazy']", "True"], proc.stdout + proc.stderr
    assert not (Path(gsm.__file__).parent / "_compat.py").exists()


def test_changelog_lists_every_removed_module_and_the_alias_table_covers_them():
    from gsm.cli.targets import OLD_MODULES
    text = (ROOT / "CHANGELOG.md").read_text()
    missing = [old for old in REMOVED if f"`{old}`" not in text]
    assert not missing, f"CHANGELOG.md does not list {missing}"
    assert sorted(OLD_MODULES) == sorted(REMOVED)
    for old, new in OLD_MODULES.items():            # every replacement exists
        for module in new:
            importlib.import_module(module)


def test_python_dash_m_old_module_fails_cleanly():
    proc = subprocess.run([sys.executable, "-m", "gsm.report", "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "No module named gsm.report" in proc.stderr


def test_readme_api_names():
    from gsm.theory import langevin_prediction
    from gsm.theory.langevin import langevin_prediction as real
    assert langevin_prediction is real
    for name in ("run", "bures_wasserstein2", "make_gaussian", "powerlaw_spectrum", "train_linear_dsm",
                 "langevin_covariance", "LinearScore", "OracleScore", "dsm_optimum", "Langevin", "dsm_loss"):
        assert callable(getattr(gsm, name)), name
    with pytest.raises(AttributeError, match="no attribute"):
        gsm.not_a_name


@pytest.mark.parametrize("old, new", sorted(OLD_TARGETS.items()))
def test_old_target_resolves_to_the_new_class(old, new):
    from gsm.cli.targets import current_target
    assert current_target(old) == new


def test_old_targets_in_a_config_are_rewritten_with_a_warning(compose_cfg):
    from hydra.utils import instantiate

    from gsm.cli.targets import update_targets
    from gsm.samplers.ddpm import DDPM
    cfg = compose_cfg("sampler=ddpm", "sampler._target_=gsm.diffusion.DDPM", "model._target_=gsm.models.LinearScore")
    with pytest.warns(FutureWarning) as caught:
        assert update_targets(cfg) == ["model._target_", "sampler._target_"]
    messages = sorted(str(w.message) for w in caught)
    assert "model._target_=gsm.models.LinearScore is a 0.1 module path" in messages[0]
    assert "use gsm.samplers.ddpm.DDPM" in messages[1]
    assert (cfg.sampler._target_, cfg.model._target_) == ("gsm.samplers.ddpm.DDPM", "gsm.scores.linear.LinearScore")
    assert type(instantiate(cfg.sampler)) is DDPM
    with warnings.catch_warnings():                  # current paths: nothing to do, no warning
        warnings.simplefilter("error")
        assert update_targets(compose_cfg()) == []


def test_gsm_command_runs_an_old_target(tmp_path, gsm_script):
    """The console script applies the alias: a 0.1 `_target_` on the command line runs, with one
    FutureWarning, and results.json records the new path."""
    proc = subprocess.run([gsm_script, "model=oracle", "model._target_=gsm.models.OracleScore", "replicates=2",
                           "data.dim=2", "data.n=10", "sampler.steps=10", "sampler.particles=20",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "model._target_=gsm.models.OracleScore is a 0.1 module path, removed in 0.2.0" in proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "ok"
    assert results["config"]["model"]["_target_"] == "gsm.scores.linear.OracleScore"


def test_deprecated_theory_names_warn_and_keep_their_values():
    """The 0.1 package-level names of gsm.theory that 0.2 replaced still work for one release, each with a
    FutureWarning naming its replacement; values against the formulas written here (note §2.1, §2.2)."""
    import torch
    import gsm.theory as t
    lam, s2, tau, k = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64), 0.25, 0.01, 100
    m = lam + s2
    calls = {
        "power_sum": (lambda: t.power_sum(3, torch.tensor(2.0), torch.tensor(3.0)), 4 + 6 + 9),     # h_2(2, 3)
        "dsm_score_matrix": (lambda: torch.diagonal(t.dsm_score_matrix(torch.diag(lam), 0.5, tau, k)),
                             (1 - (1 - tau * s2 * m) ** k) / m),
        "sgd_variance": (lambda: t.sgd_variance(lam, sigma=0.5, tau=tau)[0][:, 0], tau * lam / (2 * m)),
        "divided_differences": (lambda: t.divided_differences(lambda X: X @ X, lam)[0][0, 2], 0.5 + 2.0),
    }
    for name, (call, expected) in calls.items():
        with pytest.warns(FutureWarning, match=f"gsm.theory.{name} is deprecated"):
            value = call()
        assert torch.allclose(torch.as_tensor(value, dtype=torch.float64),
                              torch.as_tensor(expected, dtype=torch.float64), rtol=1e-12), name
