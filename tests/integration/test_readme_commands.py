"""Every `gsm …` command in the README and docs/ runs as written and is credible: status ok, and the
measured W2² within 3 s.e. of the prediction or a run that says it is out of regime (tools/readme_commands.py,
which also runs the LONG ones with `--all`)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "tools"))
from readme_commands import CI_OVERRIDES, CI_PAGES, LONG, ci_overrides, readme_commands, run_command  # noqa: E402

COMMANDS = readme_commands()


def test_the_docs_show_the_commands_this_test_knows():
    """The long and CI-adjusted commands named here are still in the docs (else this list is stale)."""
    assert len(COMMANDS) >= 10 and COMMANDS[0] == "gsm"
    for cmd in (*LONG, *CI_OVERRIDES):
        assert cmd in COMMANDS, cmd


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [c for c in readme_commands(CI_PAGES) if c not in LONG])
def test_readme_command(cmd, tmp_path):
    ok, line, _ = run_command(cmd, tmp_path, ci_overrides(cmd))
    assert ok, line
    if "data=texture" in cmd and " -m " not in f" {cmd} ":
        check_texture_run(tmp_path)


def check_texture_run(run_dir: Path):
    """A texture command (brick, DSM-SGD, Langevin, exact evaluation) also keeps every replicate stable and
    shows its images in TensorBoard: the source, an ADSN sample and the learned samples."""
    import json
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    res = json.loads((run_dir / "results.json").read_text())
    assert res["unstable_replicates"] == 0, res["warnings"]
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert {"texture/source", "texture/adsn_sample", "texture/learned_samples"} <= set(acc.Tags()["images"])
