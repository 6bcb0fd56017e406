"""A real multi-node Ray cluster on this machine: a head and two worker nodes (ray.cluster_utils).

Trials must spread over both workers, and killing one worker mid-search must leave the search to
finish every trial (Tune's FailureConfig retries the lost trial on the surviving node, logging into
the same MLflow run).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

pytestmark = pytest.mark.slow

TRIALS = 6


def _runs_on(db, node_id: str, status: str) -> list[str]:
    """Child runs with ``status`` whose trial runs on ``node_id`` (read from the MLflow sqlite store)."""
    query = (
        "select r.run_uuid from runs r join tags t on r.run_uuid = t.run_uuid "
        "where r.status = ? and t.key = 'squeezetune.node' and t.value = ?"
    )
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return [row[0] for row in con.execute(query, (status, node_id))]
    except sqlite3.Error:
        return []


def _done_on(db, node_id: str) -> bool:
    """Whether the driver has recorded a completed trial from ``node_id`` (read from the Optuna sqlite store)."""
    query = (
        "select count(*) from trials t join trial_user_attributes a on t.trial_id = a.trial_id "
        "where t.state = 'COMPLETE' and a.key = 'node' and a.value_json = ?"
    )
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute(query, (json.dumps(node_id),)).fetchone()[0] > 0
    except sqlite3.Error:
        return False


def test_search_spreads_over_nodes_and_survives_losing_one(workdir):
    import ray
    from mlflow import MlflowClient
    from ray.cluster_utils import Cluster

    from squeezetune.search.config import SearchConfig
    from squeezetune.search.runner import run_search

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 3

        killed = threading.Event()
        dead: list[tuple[str, str]] = []

        def kill_one_worker_mid_search() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                db, node = workdir / "mlflow.db", workers[1].node_id
                running = _runs_on(db, node, "RUNNING")
                # worker 2 finished a trial, the driver has its result (which lives in that node's object
                # store until fetched), and the worker runs another trial: kill it
                if running and _runs_on(db, node, "FINISHED") and _done_on(workdir / "optuna.db", node):
                    lost = running[0]
                    dead.append((workers[1].node_id, lost))
                    cluster.remove_node(workers[1], allow_graceful=False)
                    killed.set()
                    return
                time.sleep(0.1)

        killer = threading.Thread(target=kill_one_worker_mid_search, daemon=True)
        killer.start()
        config = SearchConfig.from_dict(
            {
                "name": "cluster",
                "trials": TRIALS,
                "max_concurrent": 2,
                "max_failures": 3,
                "space": {"finetune": {"epochs": [2, 3]}, "finetune_centroids": {"epochs": 1}},
            }
        )
        outcome = run_search(config)
        killer.join(5)
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert killed.is_set(), "the worker was never killed mid-search"
    dead_node, lost_run = dead[0]
    assert outcome.finished and outcome.counts["complete"] == TRIALS and outcome.counts["failed"] == 0
    assert len(outcome.nodes) >= 2, outcome.nodes

    c = MlflowClient(outcome.tracking_uri)
    exp = c.get_experiment_by_name("squeezetune")
    children = c.search_runs([exp.experiment_id], filter_string="tags.`squeezetune.role` = 'trial'")
    assert len(children) == TRIALS and all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.tags["squeezetune.node"] for r in children}) >= 2
    lost = next(r for r in children if r.info.run_id == lost_run)
    assert int(lost.data.tags["squeezetune.attempts"]) >= 2  # retried, into the same run
    assert lost.data.tags["squeezetune.node"] != dead_node
