"""tools/readme_commands.check: a linear run passes within 3 s.e., or out of regime only with a stated reason."""
import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("readme_commands", Path(__file__).parents[2] / "tools" / "readme_commands.py")
readme_commands = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(readme_commands)


def result(mean, se, pred, ok, reasons=()):
    return {"status": "ok", "w2_exact": {"mean": mean, "stderr": se}, "w2_predicted": pred,
            "regime": {"ok": ok, "reasons": list(reasons)}}


def test_a_linear_run_passes_within_3_se_or_out_of_regime_with_a_reason():
    assert readme_commands.check(result(1.0, 0.1, 1.2, True))[0]                      # z = −2
    assert not readme_commands.check(result(1.0, 0.1, 1.5, True))[0]                  # z = −5, in regime
    assert not readme_commands.check(result(1.0, 0.1, 1.5, False))[0]                 # out of regime, no reason
    passes, line = readme_commands.check(result(1.0, 0.1, 1.5, False, ["SGD is not stationary"]))
    assert passes and "z = -5.00" in line and "accepted: out of regime with a reason" in line
