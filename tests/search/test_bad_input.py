"""Bad input is one line on stderr, exit 2, before any trial starts (no MLflow run is created)."""

from __future__ import annotations

import time

import pytest
import yaml


def _runs(workdir) -> int:
    db = workdir / "mlflow.db"
    if not db.exists():
        return 0
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{db}")
    exps = c.search_experiments()
    return len(c.search_runs([e.experiment_id for e in exps])) if exps else 0


def _search(cli, workdir, config: dict, *extra: str):
    path = workdir / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = cli(["search", "--config", str(path), *extra])
    return code, err.strip().splitlines()[-1] if err.strip() else ""


@pytest.mark.parametrize(
    "config, message",
    [
        ({"space": {"prune": {"layers": {"fc7": {"keep": 100}}}}}, "unknown layer 'fc7'"),
        ({"space": {"share": {"bitz": 3}}}, "unknown knob 'bitz'"),
        ({"space": {"prune": {"layers": {"fc1": {"keep": [900, 100]}}}}}, "empty range"),
        ({"space": {"encode": {"coder": []}}}, "empty choice list"),
        ({"trails": 3}, "unknown key 'trails'"),
        ({"task": "lenet300-mnist"}, "needs --data-dir"),
        ({"sampler": "grid"}, "sampler='grid'"),
        ({"warm_start": ["ws.yaml"]}, "unknown layer 'fc9' in prune.layers"),
    ],
)
def test_bad_config_fails_in_one_line_before_any_trial(cli, workdir, config, message):
    (workdir / "ws.yaml").write_text(yaml.safe_dump({"prune": {"layers": {"fc9": {"keep_fraction": 0.1}}}}))  # a warm start naming no layer of the model
    code, last = _search(cli, workdir, {"name": "bad", **config})
    assert code == 2
    assert last.startswith("error: ") and message in last
    assert _runs(workdir) == 0


@pytest.mark.slow
def test_constraint_no_config_can_meet(cli, workdir):
    code, last = _search(cli, workdir, {"name": "tiny", "constraints": {"max_bytes": 500}, "fidelity": None, "space": {"finetune": {"epochs": 1}}})
    assert code == 2 and "max_bytes=500 cannot be met" in last
    code, last = _search(cli, workdir, {"name": "fewmacs", "constraints": {"max_macs": 1000}, "space": {}})  # one-shot pruning removes no MACs
    assert code == 2 and "max_macs=1,000 cannot be met" in last
    assert _runs(workdir) == 0


def test_unreachable_tracking_server_is_a_quick_clear_error(cli, workdir):
    t0 = time.perf_counter()
    code, last = _search(cli, workdir, {"name": "x"}, "--tracking-uri", "http://127.0.0.1:9")
    assert code == 2 and "unreachable" in last and "127.0.0.1:9" in last
    assert time.perf_counter() - t0 < 15
    code, _, err = cli(["pareto", "--name", "x", "--tracking-uri", "http://127.0.0.1:9"])
    assert code == 2 and "unreachable" in err


def test_file_store_uri_is_refused(cli, workdir):
    code, last = _search(cli, workdir, {"name": "x"}, "--tracking-uri", "./mlruns")
    assert code == 2 and "not supported" in last


def test_resume_of_unknown_search(cli, workdir):
    code, _, err = cli(["search", "--resume", "ghost"])
    assert code == 2 and "ghost" in err and len(err.strip().splitlines()) == 1
