"""A real search: local Ray, real sqlite MLflow store, lenet300-digits, a 3-epoch fidelity with MO-ASHA.

One search (module fixture) is checked from every side: MLflow parent and children, rung histories,
the Pareto tags and artifacts, failed and stopped trials, the Optuna study, then ``pareto`` and
``export`` on it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

TRIALS = 8
EPOCHS = 3
CONFIG = {
    "name": "e2e",
    "trials": TRIALS,
    "sampler": "random",
    "seed": 1,
    "max_concurrent": 1,  # one trial at a time: the order trials reach the rung, and so what MO-ASHA stops, follows from the seed
    "warm_start_neighbours": False,  # the deep-compression warm start only: seven trials MO-ASHA may stop
    "fidelity": {"epochs": EPOCHS, "centroid_epochs": 1, "min_epochs": 1, "reduction_factor": 3, "early_stopping": True},  # one rung, at 1 epoch; MO-ASHA always on
    "space": {
        # lr up to 1e4 makes some fine-tunes diverge: those trials must fail cleanly, the rest go on
        "finetune": {"distill": [True, False], "lr": [0.01, 10000.0]},
        "share": {"default": {"bits": [2, 6]}},
    },
}


@pytest.fixture(scope="module")
def search(workdir, cli):
    path = workdir / "search.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    code, out, err = cli(["search", "--config", str(path)])
    assert code == 0, err
    return out, err


@pytest.fixture(scope="module")
def store(search, workdir):
    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("squeezetune")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parent = [r for r in runs if r.data.tags.get("squeezetune.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    return uri, c, parent, children


def test_prints_front_and_the_mlflow_ui_line(search, workdir):
    out, err = search
    assert "Pareto front" in out and "neighbour" not in err  # warm_start_neighbours: false
    assert f"mlflow ui --backend-store-uri sqlite:///{workdir / 'mlflow.db'}" in out


def test_one_parent_one_child_per_trial(store):
    _, c, parent, children = store
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert c.get_experiment(parent[0].info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's runs table
    assert len(children) == TRIALS
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent[0].info.run_id}
    assert len({r.data.tags["squeezetune.trial"] for r in children}) == TRIALS


def test_children_carry_params_metrics_and_artifacts(store):
    _, c, _, children = store
    done = [r for r in children if r.info.status == "FINISHED"]
    assert done, "no trial finished"
    for r in done:
        assert {"prune.fc1.keep_fraction", "share.fc2.bits", "encode.coder", "finetune.distill"} <= set(r.data.params)
        assert int(r.data.params["finetune.epochs"]) == EPOCHS  # the fidelity, not a knob
        m = r.data.metrics
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["val_accuracy"] <= 1 and m["bytes"] > 0
        assert math.isclose(m["ratio"], m["dense_bytes"] / m["bytes"])
        assert "stage.prune.accuracy" in m and "layer.fc1.kept" in m and "latency_ms_b1" not in m  # no objective needs latency
        assert int(m["layer.fc1.kept"]) == max(1, round(float(r.data.params["prune.fc1.keep_fraction"]) * 784 * 300))
        names = {a.path for a in c.list_artifacts(r.info.run_id)}
        assert {"model.sqz", "model.report.json", "recipe.yaml"} <= names


def test_container_artifact_is_the_measured_file(store, tmp_path):
    from squeezetune.compression.finetune import evaluate
    from squeezetune.compression.pipeline import decode_file
    from squeezetune.tasks import get_task

    _, c, _, children = store
    r = next(r for r in children if r.info.status == "FINISHED")
    path = Path(c.download_artifacts(r.info.run_id, "model.sqz", str(tmp_path)))
    assert path.stat().st_size == int(r.data.metrics["bytes"])
    task = get_task("lenet300-digits")
    acc = evaluate(decode_file(path, task=task), task.load_data(None)[1])
    assert acc == pytest.approx(r.data.metrics["accuracy"], abs=1e-6)


def test_each_run_shows_its_rung_history_and_stopped_trials_end_at_their_rung(store):
    _, c, _, children = store
    stopped = [r for r in children if r.data.tags.get("squeezetune.outcome") == "stopped"]
    complete = [r for r in children if r.data.tags.get("squeezetune.outcome") == "complete"]
    assert stopped and complete, "expected MO-ASHA to stop some trials at the 1-epoch rung and let others finish"
    for r in stopped:
        assert r.info.status == "KILLED"
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "val_accuracy")]
        assert steps == [1]  # stopped at the rung
        assert r.data.metrics["epoch"] == 1
    for r in complete:
        assert r.info.status == "FINISHED"
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_accuracy"))
        assert steps == [1, EPOCHS]  # the rung, then the final outcome at the full fidelity
        assert c.get_metric_history(r.info.run_id, "bytes")[0].value > 0
        assert r.data.metrics["epoch"] == EPOCHS


def test_diverging_trials_are_recorded_failed_and_the_search_goes_on(store):
    _, _, _, children = store
    failed = [r for r in children if r.info.status == "FAILED"]
    assert failed, "expected some lr values to diverge"
    for r in failed:
        assert "loss became" in r.data.tags["error"] or "nan" in r.data.tags["error"].lower()
        assert float(r.data.params["finetune.lr"]) > 1.0
    assert len(failed) < TRIALS


def test_pareto_tags_and_front_artifacts_match_the_front(store, tmp_path):
    from squeezetune.search.pareto import pareto_front, point

    _, c, parent, children = store
    done = [r for r in children if r.info.status == "FINISHED"]
    front = pareto_front([point(int(r.data.tags["squeezetune.trial"]), r.data.metrics, run_id=r.info.run_id) for r in done])  # selected on validation
    tagged = {r.info.run_id for r in children if r.data.tags.get("pareto") == "true"}
    assert tagged == {p.run_id for p in front}
    pid = parent[0].info.run_id
    names = {a.path for a in c.list_artifacts(pid, "front")}
    assert names == {"front/front.csv", "front/front.json", "front/front.png", "front/front.html"}
    data = json.loads(Path(c.download_artifacts(pid, "front/front.json", str(tmp_path))).read_text())
    assert [row["run_id"] for row in data["front"]] == [p.run_id for p in front]
    html = Path(c.download_artifacts(pid, "front/front.html", str(tmp_path))).read_text()
    assert "plotly" in html.lower() and "Pareto front" in html
    assert Path(c.download_artifacts(pid, "front/front.png", str(tmp_path))).read_bytes()[:4] == b"\x89PNG"


def test_optuna_study_agrees_with_mlflow(store, workdir):
    import optuna

    _, _, _, children = store
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{workdir / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == TRIALS
    assert states.count(optuna.trial.TrialState.COMPLETE) == sum(r.info.status == "FINISHED" for r in children)
    assert states.count(optuna.trial.TrialState.FAIL) == sum(r.info.status == "FAILED" for r in children)
    assert states.count(optuna.trial.TrialState.PRUNED) == sum(r.info.status == "KILLED" for r in children)
    runs = {r.info.run_id: r for r in children}
    for t in study.trials:
        run = runs[t.user_attrs["mlflow_run_id"]]
        if t.state == optuna.trial.TrialState.COMPLETE:  # the objectives of the full schedule, selected on validation
            assert t.values == [run.data.metrics["val_accuracy"], run.data.metrics["bytes"]]
            assert t.user_attrs["epoch"] == EPOCHS
        if t.state == optuna.trial.TrialState.PRUNED:  # never told partial values; the rung's figures kept aside
            assert t.values is None and t.user_attrs["stopped_at"] == 1 and "rung_val_accuracy" in t.user_attrs
            assert t.constraints["fidelity"] == pytest.approx(1 - 1 / EPOCHS)


def _rows(text: str) -> dict[str, list[str]]:
    """The trial rows of a ``pareto`` table: trial number -> its columns."""
    return {cols[0]: cols for cols in (line.split() for line in text.splitlines()) if cols and cols[0].isdigit()}


def test_pareto_command_prints_the_front_and_the_fidelity_each_trial_reached(store, workdir, cli):
    uri, _, _, children = store
    code, out, err = cli(["pareto", "--name", "e2e", "--tracking-uri", uri])
    assert code == 0, err
    assert "on the front" in out and "dense" in out
    header = out.splitlines()[1].split()
    epochs = header.index("epochs") - 2  # "val acc" and "drop pt" are two words each
    front = _rows(out)
    assert front and {cols[epochs] for cols in front.values()} == {str(EPOCHS)}  # the front ran the full schedule
    code, out, err = cli(["pareto", "--name", "e2e", "--all", "--tracking-uri", uri])
    assert code == 0, err
    stopped = {r.data.tags["squeezetune.trial"] for r in children if r.data.tags.get("squeezetune.outcome") == "stopped"}
    assert f"{len(stopped)} stopped at a rung" in out
    listed = _rows(out.split("stopped by MO-ASHA")[1])
    assert {trial: cols[epochs] for trial, cols in listed.items()} == dict.fromkeys(stopped, "1")


def test_export_writes_every_format_and_remeasures(store, tmp_path, cli):
    uri, c, _, children = store
    out_dir = tmp_path / "exported"
    code, out, err = cli(["export", "--name", "e2e", "--max-drop", "100", "--out", str(out_dir), "--tracking-uri", uri])
    assert code == 0, err
    summary = json.loads((out_dir / "export.json").read_text())
    for name in ("model.sqz", "model.safetensors", "model.pt2", "model.onnx"):
        assert (out_dir / name).stat().st_size > 0
    assert summary["files"]["container"] == str((out_dir / "model.sqz").absolute())  # absolute, read from anywhere
    acc = summary["accuracy"]
    assert acc["container"] == pytest.approx(summary["accuracy_in_search"], abs=1e-6)  # on the evaluation images
    assert 0 <= summary["val_accuracy_in_search"] <= 1
    assert acc["torch_export"] == pytest.approx(acc["container"], abs=1e-6)
    assert acc["onnx"] == pytest.approx(acc["container"], abs=0.003)
    assert "re-measured" in out
    version = c.get_model_version_by_alias("squeezetune-e2e", "exported")
    assert version.run_id == summary["export_run_id"] != summary["run_id"]
    export_run = c.get_run(summary["export_run_id"])  # a run of its own under the search's parent run
    assert export_run.info.status == "FINISHED" and export_run.data.tags["squeezetune.role"] == "export"
    assert export_run.data.tags["mlflow.parentRunId"] == c.get_run(summary["run_id"]).data.tags["mlflow.parentRunId"]
    assert export_run.data.tags["squeezetune.exported_run"] == summary["run_id"]
    assert not [a for a in c.list_artifacts(summary["run_id"]) if a.path == "model"]  # the trial's run is only read
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in out_dir.iterdir()} == {p.name: 0o666 & ~umask for p in out_dir.iterdir()}
    assert out_dir.stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_failed_export_leaves_no_folder_and_the_trial_intact(store, tmp_path, cli, monkeypatch):
    """MLflow failing mid-export (here: log_model raising, as a full disk or a dropped server would):
    the trial's run and its place on the front are untouched, the export run is FAILED, nothing is written."""
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    uri, c, _, children = store
    done = sorted((r for r in children if r.info.status == "FINISHED"), key=lambda r: int(r.data.tags["squeezetune.trial"]))
    trial = done[0].data.tags["squeezetune.trial"]
    code, before, _ = cli(["pareto", "--name", "e2e", "--all", "--tracking-uri", uri])
    assert code == 0

    def refuse(*args, **kwargs):
        raise MlflowException("the registry is read-only")

    monkeypatch.setattr(mlflow.pytorch, "log_model", refuse)
    out_dir = tmp_path / "failed"
    code, _, err = cli(["export", "--name", "e2e", "--trial", trial, "--out", str(out_dir), "--tracking-uri", uri, "--model-name", "e2e-failed"])
    assert code == 2 and err.strip().splitlines()[-1] == "error: MLflow could not log or register the model as 'e2e-failed' (alias 'exported'): the registry is read-only"
    assert not out_dir.exists() and not list(tmp_path.iterdir())  # no folder, no staging left behind
    assert c.get_run(done[0].info.run_id).info.status == "FINISHED"
    failed = c.search_runs([c.get_run(done[0].info.run_id).info.experiment_id], filter_string="tags.`squeezetune.role` = 'export' and attributes.status = 'FAILED'")
    assert [r.data.tags["squeezetune.exported_trial"] for r in failed] == [trial]
    code, after, _ = cli(["pareto", "--name", "e2e", "--all", "--tracking-uri", uri])
    assert code == 0 and after == before


def test_export_replaces_a_folder_only_with_force(store, tmp_path, cli):
    uri, *_ = store
    out_dir = tmp_path / "again"
    out_dir.mkdir()
    (out_dir / "old.txt").write_text("old")
    args = ["export", "--name", "e2e", "--max-drop", "100", "--out", str(out_dir), "--tracking-uri", uri, "--alias", "again"]
    code, _, err = cli(args)
    assert code == 2 and "--force" in err and (out_dir / "old.txt").exists()
    code, _, err = cli([*args, "--force"])
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["export.json", "model.onnx", "model.pt2", "model.safetensors", "model.sqz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]


def test_export_selectors_are_checked(store, tmp_path, cli):
    uri, *_ = store
    code, _, err = cli(["export", "--name", "e2e", "--out", str(tmp_path), "--tracking-uri", uri])
    assert code == 2 and "exactly one of" in err
    code, _, err = cli(["export", "--name", "e2e", "--max-bytes", "10", "--out", str(tmp_path), "--tracking-uri", uri])
    assert code == 2 and "no front point is that small" in err
    code, _, err = cli(["export", "--name", "e2e", "--max-drop", "1", "--max-latency-ms", "5", "--out", str(tmp_path / "x"), "--tracking-uri", uri])
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: --max-latency-ms 5: search 'e2e' timed no trial") and not (tmp_path / "x").exists()
    code, _, err = cli(["export", "--name", "e2e", "--trial", "0", "--max-latency-ms", "5", "--out", str(tmp_path / "x"), "--tracking-uri", uri])
    assert code == 2 and "--max-latency-ms 5 narrows --max-bytes or --max-drop; --trial 0 picks one trial" in err
    code, _, err = cli(["pareto", "--name", "nope", "--tracking-uri", uri])
    assert code == 2 and "no search named 'nope'" in err and len(err.strip().splitlines()) == 1


def test_same_name_again_is_refused_before_any_trial(store, cli):
    uri, *_ = store
    code, _, err = cli(["search", "--name", "e2e", "--tracking-uri", uri, "--trials", "1"])
    assert code == 2 and "already exists" in err
