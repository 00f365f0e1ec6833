"""The `gsm` command: a Hydra app over `gsm.pipeline.run.run`. Configs: conf/ (shipped as gsm.conf).

Exit status: 0 when the run finished (status ok or diverged: a sweep goes on), 2 for a bad config
(one line `gsm: error: <key> must be <range>, got <value>` on stderr, nothing run), 1 when the run
failed (results.json has status failed and the error; one line `gsm: error: the run failed with
<type>: <message> ...`; in a multirun the other jobs still run and the sweep exits 1 at the end),
130 after SIGINT and 143 after SIGTERM (results.json has status interrupted). No traceback in these
cases. Ctrl-C at any moment, start-up included (importing torch takes seconds), exits 130: SIGINT is
held outside the run itself (`gsm.cli.sigint`).

Nothing heavy is imported at module level, so that `main` is holding SIGINT before torch and Hydra load.
"""
import os
import signal
import sys

from gsm.cli import sigint


def exit_with(code: int, message: str):
    """Ends the process with `message` as gsm's last line on stderr and exit status `code`."""
    import logging

    print(message, file=sys.stderr, flush=True)
    # gsm's line is the last: a library's exit hook (torch's FakeTensor cache stats, at INFO when a signal
    # arrives while torch's loggers are not yet set up) must not log after it
    logging.disable(logging.CRITICAL)
    sys.exit(code)      # SystemExit passes through Hydra's job runner (it catches Exception only)


def _task(cfg) -> float:
    """One Hydra job. A joblib job runs in a process of its own (`_isolated`); any other in this one."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from gsm.cli.callbacks import joblib_launcher

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun and joblib_launcher(hc):
        return _isolated(cfg, hc.runtime.output_dir)
    return run_job(cfg, hc.runtime.output_dir, multirun)


def run_job(cfg, out: str, multirun: bool, say_where: bool | None = None) -> float:
    """run(cfg) in `out`, with the exit statuses of the module doc; returns the sweepers' objective.
    say_where (default: a single run): end with the line `gsm: results in <out>`."""
    try:
        sigint.check()          # one noted while Hydra composed the config: before torch loads
        with sigint.held():     # torch loads here (seconds): an `except` inside its imports must not eat a SIGINT
            from gsm.cli.targets import update_targets
            from gsm.pipeline.interrupt import Terminated
            from gsm.pipeline.run import run, summary_table
            from gsm.pipeline.status import RunFailed, error_record
            from gsm.pipeline.validate import ConfigError
    except KeyboardInterrupt:
        exit_with(130, "gsm: interrupted by SIGINT")

    try:
        update_targets(cfg)             # 0.1 `_target_` paths (gsm.diffusion.DDPM, ...), until 0.3.0
        with sigint.released():         # the run's own handlers take over (gsm.pipeline.interrupt)
            results = run(cfg, out)
    except ConfigError as e:
        exit_with(2, f"gsm: error: {e}")
    except KeyboardInterrupt as e:     # SIGINT, or SIGTERM while the run was active (Terminated)
        name, code = ("SIGTERM", 143) if isinstance(e, Terminated) else ("SIGINT", 130)
        written = os.path.exists(os.path.join(out, "results.json"))      # not when it came before the run started
        exit_with(code, f"gsm: interrupted by {name}" + (f"; partial results in {out}/results.json" if written else ""))
    except Exception as e:             # results.json says failed
        err = error_record(e)
        message = (f"gsm: error: the run failed with {err['type']}: {err['message']} "
                   f"(results.json, status failed, in {out})")
        if not multirun:
            exit_with(1, message)
        # a multirun goes on: Hydra's sweeper raises the first failure after the batch (exit 1)
        print(message, file=sys.stderr, flush=True)
        raise RunFailed(message) from None
    print(summary_table(results))
    if say_where is None:
        say_where = not multirun     # a sweep prints its own folder at the end (`main`)
    if say_where:
        print(f"gsm: results in {shown_path(out)}")
    return _objective(results)


def shown_path(path) -> str:
    """`path` relative to the working directory when it lies inside it (outputs/<date>/<time>), else as given."""
    rel = os.path.relpath(os.path.abspath(path))
    return str(path) if rel.startswith("..") else rel


def _objective(results: dict) -> float:
    """The sweepers' objective: the exact W2² (linear scores), else the particle one (neural scores)."""
    w2 = results.get("w2_exact") or results.get("w2_empirical") or {}
    mean = w2.get("mean")
    return float("nan") if mean is None else mean


def _isolated(cfg, out: str) -> float:
    """A joblib job run as `python -m gsm.cli.job` in a child process. A job killed by SIGKILL or the OOM
    killer then takes down only that child (its results.json says running, gsm-report shows it lost),
    not the launcher's worker, whose death aborts the whole sweep (loky's TerminatedWorkerError). Every
    ending that is not ok or diverged raises RunFailed: the sweep goes on and exits 1 at the end."""
    import json
    import subprocess
    from pathlib import Path

    from omegaconf import OmegaConf

    from gsm.pipeline.status import RunFailed

    path = Path(out) / ".gsm_job.yaml"
    OmegaConf.save(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), path)
    try:
        code = subprocess.call([sys.executable, "-m", "gsm.cli.job", str(path), str(out)])
    finally:
        path.unlink(missing_ok=True)
    if code == 0:
        return _objective(json.loads((Path(out) / "results.json").read_text()))
    why = {1: "failed (results.json, status failed)", 2: "had a bad config (nothing run)",
           130: "was interrupted by SIGINT", 143: "was interrupted by SIGTERM"}.get(code)
    if why is None:
        why = (f"was killed by {signal.Signals(-code).name} (results.json says running; gsm-report shows it lost)"
               if code < 0 else f"exited with status {code}")
    raise RunFailed(f"gsm: error: the job in {out} {why}")


def main():
    """The console script (and `python -m gsm`): the Hydra app, built here so that a Ctrl-C while torch
    and Hydra load, or after the run, also ends with one line and exit status 130."""
    # user classes (model._target_=my_pkg.MyScore) import from the working directory, as under `python -m`
    if not {"", os.getcwd()} & set(sys.path):
        sys.path.insert(0, os.getcwd())
    try:
        with sigint.held():     # Hydra and OmegaConf are not safe to interrupt: only the run is (run_job)
            import hydra

            from gsm.cli.compose import composed_once
            from gsm.cli.overrides import unknown_option
            sigint.check()
            typo = unknown_option(sys.argv[1:])     # before Hydra, which reports it in 15 lines and exits 1
            if typo:
                exit_with(2, typo)
            app = hydra.main(version_base="1.3", config_path="pkg://gsm.conf", config_name="config")(_task)
            with composed_once():   # a sweep's jobs share their composition (Hydra composes each twice)
                app()
    except KeyboardInterrupt:
        exit_with(130, "gsm: interrupted by SIGINT")
    except SystemExit as e:
        if e.code == 1:        # some jobs failed, the others ran: their folder is still worth a look
            _print_sweep_directory()
        raise
    _print_sweep_directory()


def _print_sweep_directory():
    """`gsm: results in <sweep dir>` after a multirun (its folder, noted by gsm.cli.callbacks)."""
    from gsm.cli.callbacks import SweepDirectory

    for where in SweepDirectory.started:
        print(f"gsm: results in {shown_path(where)}", flush=True)
