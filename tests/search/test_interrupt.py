"""Ctrl-C, --resume and the cluster address on a real search (local Ray, sqlite MLflow and Optuna).

One search is interrupted with SIGINT sent to its process group (what a terminal's Ctrl-C does),
resumed, then extended; every step is checked against the stores: exit codes, no configuration
run twice, MLflow run names that match the trial numbers. Searches refused for want of a cluster or
of GPUs must leave their name free; a search whose every trial fails exits 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml

from tests.search._driver import study_states, wait_for_finished_and_running

pytestmark = pytest.mark.slow

CONFIG = {
    "name": "ctrlc",
    "trials": 3,
    "sampler": "random",
    "seed": 1,
    "max_concurrent": 1,
    "warm_start": [],
    "fidelity": None,
    "space": {"finetune": {"epochs": 2}, "finetune_centroids": {"epochs": 1}},
}


def _store(workdir):
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = c.get_experiment_by_name("squeezetune")
    return c, exp.experiment_id


def _parents(workdir) -> list[str]:
    if not (workdir / "mlflow.db").exists():
        return []
    c, exp_id = _store(workdir)
    return [r.data.tags["squeezetune.search"] for r in c.search_runs([exp_id], filter_string="tags.`squeezetune.role` = 'parent'")]


def _study(workdir, name: str = "ctrlc"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'optuna.db'}")


def _check_no_configuration_ran_twice(workdir, trials: int) -> None:
    import optuna

    study = _study(workdir)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == trials
    params = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(params)) == len(params), "a configuration ran twice"
    for t in study.trials:  # an interrupted trial is run again once, with its parameters and run
        if t.state == optuna.trial.TrialState.FAIL:
            assert t.user_attrs.get("interrupted"), t.user_attrs
            retries = [r for r in done if r.user_attrs.get("retry_of") == t.number]
            assert len(retries) == 1 and retries[0].params == t.params
            assert retries[0].user_attrs["mlflow_run_id"] == t.user_attrs["mlflow_run_id"]
    c, exp_id = _store(workdir)
    runs = c.search_runs([exp_id], filter_string="tags.`squeezetune.role` = 'trial' and tags.`squeezetune.search` = 'ctrlc'")
    assert len(runs) == trials and all(r.info.status == "FINISHED" for r in runs)
    assert {r.info.run_name for r in runs} == {f"ctrlc-trial-{r.data.tags['squeezetune.trial']}" for r in runs}
    assert {int(r.data.tags["squeezetune.trial"]) for r in runs} == {t.number for t in done}


@pytest.fixture(scope="module")
def interrupted(workdir):
    (workdir / "ctrlc.yaml").write_text(yaml.safe_dump(CONFIG))
    out, err = workdir / "ctrlc.out", workdir / "ctrlc.err"
    with out.open("w") as o, err.open("w") as e:
        driver = subprocess.Popen(
            [sys.executable, "-m", "squeezetune.cli", "search", "--config", "ctrlc.yaml"],
            cwd=workdir,
            stdout=o,
            stderr=e,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            wait_for_finished_and_running(driver, workdir / "optuna.db", err)
            os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
            code = driver.wait(120)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
    return code, out.read_text(), err.read_text()


def test_ctrl_c_exits_130_and_says_how_to_continue(interrupted, workdir):
    code, out, err = interrupted
    assert code == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "interrupted"
    assert "squeezetune search --resume ctrlc" in out
    assert "Tuner.restore" not in err  # Tune's own hint points at a folder that is removed
    assert study_states(workdir / "optuna.db").count("COMPLETE") < CONFIG["trials"]
    c, _ = _store(workdir)  # a run the interruption cut says so (its worker, stopped by Tune, had tagged it a stop)
    running = [c.get_run(t.user_attrs["mlflow_run_id"]) for t in _study(workdir).trials if t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs]
    outcomes = {(r.info.status == "FINISHED", r.data.tags.get("squeezetune.outcome")) for r in running}
    assert outcomes <= {(True, "complete"), (False, "interrupted")}, outcomes


@pytest.fixture(scope="module")
def resumed(interrupted, cli, workdir):
    return cli(["search", "--resume", "ctrlc"])


def test_resume_finishes_the_search_without_running_a_configuration_twice(resumed, workdir):
    code, out, err = resumed
    assert code == 0, err
    assert "resuming:" in err and "Pareto front" in out
    _check_no_configuration_ran_twice(workdir, CONFIG["trials"])


def test_resume_with_fewer_trials_than_finished_is_refused(resumed, cli):
    code, _, err = cli(["search", "--resume", "ctrlc", "--trials", "2"])
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: --trials 2 is below the 3 trials")


def test_resume_without_a_cluster_is_refused_and_local_overrides_the_address(resumed, cli, workdir, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, _, err = cli(["search", "--resume", "ctrlc", "--trials", "4", "--ray-address", "auto"])
    assert code == 2 and "no Ray cluster answers there" in err.strip().splitlines()[-1]
    assert len(_study(workdir).trials) == CONFIG["trials"] + sum(t.state.name == "FAIL" for t in _study(workdir).trials)
    # more trials continue the sampler's stream: a sampler seeded as before would replay trial 0
    code, out, err = cli(["search", "--resume", "ctrlc", "--trials", "4", "--ray-address", "local"])
    assert code == 0, err
    assert "resuming: 3 of 4 trials done, 1 to run" in err
    assert "[4/4 done: 4 complete, 0 stopped, 0 failed" in err  # the status line counts on from the 3 done
    _check_no_configuration_ran_twice(workdir, 4)
    code, _, err = cli(["search", "--resume", "ctrlc"])  # a plain resume now finishes the 4 asked for last
    assert code == 0 and "resuming: 4 of 4 trials done, 0 to run" in err, err


def test_a_search_refused_for_want_of_a_cluster_leaves_its_name_free(cli, workdir, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, _, err = cli(["search", "--config", "ctrlc.yaml", "--name", "nocluster", "--ray-address", "auto"])
    assert code == 2 and "no Ray cluster answers there" in err.strip().splitlines()[-1]
    code, _, err = cli(["search", "--config", "ctrlc.yaml", "--name", "nocluster", "--gpus-per-trial", "64"])
    assert code == 2 and "resources.gpus=64 per trial" in err.strip().splitlines()[-1]
    assert "nocluster" not in _parents(workdir)


def test_a_search_whose_every_trial_fails_exits_1(cli, workdir):
    config = {**CONFIG, "name": "allfail", "trials": 2, "max_concurrent": 2, "space": {"finetune": {"epochs": 1, "lr": 1e20}, "finetune_centroids": {"epochs": 0}}}
    (workdir / "allfail.yaml").write_text(yaml.safe_dump(config))
    code, out, err = cli(["search", "--config", "allfail.yaml"])
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: no trial of search 'allfail' completed (2 failed; first error:") and "loss became" in last
    assert "Pareto front" in out
