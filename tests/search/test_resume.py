"""Kill a real search driver (SIGKILL, mid-trial), then --resume: exactly the requested trials, no duplicate runs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.search._driver import study_states, wait_for_finished_and_running

pytestmark = pytest.mark.slow

TRIALS = 5
SQUEEZETUNE = Path(sys.executable).with_name("squeezetune")


def _session_pids(sid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process in session ``sid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")))
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                pass
    return found


def test_resume_after_the_driver_is_killed(cli, workdir):
    config = {
        "name": "killed",
        "trials": TRIALS,
        "max_concurrent": 2,
        "fidelity": None,
        "space": {"finetune": {"epochs": [1, 2]}, "finetune_centroids": {"epochs": 1}},
    }
    (workdir / "k.yaml").write_text(yaml.safe_dump(config))
    log = (workdir / "driver.log").open("w")
    driver = subprocess.Popen([str(SQUEEZETUNE), "search", "--config", "k.yaml"], cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_finished_and_running(driver, workdir / "optuna.db", workdir / "driver.log", timeout=240)
    finally:
        driver.kill()  # SIGKILL to the driver alone: no handler runs
        driver.wait(30)
        log.close()
    states = study_states(workdir / "optuna.db")
    assert states.count("COMPLETE") < TRIALS and "RUNNING" in states
    running = [n for n, s in enumerate(states) if s == "RUNNING"]  # trial numbers follow insertion order
    for _ in range(150):  # the trial workers go down with the driver: nothing keeps logging to a run
        workers = [pid for pid, cmd in _session_pids(driver.pid) if "ImplicitFunc" in cmd or "run_trial" in cmd]
        if not workers:
            break
        time.sleep(0.2)
    # Ray's per-node agents exit on their own a minute or two later; end them now (we started them)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(driver.pid, signal.SIGKILL)
    assert not workers, f"trial workers outlived the killed driver: {workers}"

    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("squeezetune")
    before = c.search_runs([exp.experiment_id], filter_string="tags.`squeezetune.role` = 'trial'")

    code, out, err = cli(["search", "--resume", "killed"])
    assert code == 0, err
    assert "resuming:" in err

    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("squeezetune.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("squeezetune.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == TRIALS, [r.data.tags.get("squeezetune.trial") for r in children]
    assert all(r.info.status == "FINISHED" for r in children)
    assert {r.info.run_id for r in before} <= {r.info.run_id for r in children}
    assert len({r.data.tags["squeezetune.trial"] for r in children}) == TRIALS

    import optuna

    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{workdir / 'optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == TRIALS
    assert {t.user_attrs["mlflow_run_id"] for t in done} == {r.info.run_id for r in children}
    # each trial the kill left RUNNING either had finished its MLflow run (recorded from it) or was
    # interrupted: closed as FAIL and queued again, and that retry completed
    for n in running:
        t = study.trials[n]
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.user_attrs["mlflow_run_id"] in {r.info.run_id for r in children}
        else:
            assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("interrupted"), (n, t.state, t.user_attrs)
            retries = [r for r in done if r.user_attrs.get("retry_of") == n]
            assert len(retries) == 1 and retries[0].params == t.params
    assert "Pareto front" in out
