"""The cluster setup of ``ray_cluster.yaml``, on this machine: a multi-node Ray cluster
(``ray.cluster_utils``: a head and two worker nodes) and a real ``mlflow server`` process that the
trials log to over HTTP, artifacts proxied by the server (``--artifacts-destination``).

Eight trials run at once over both workers; killing one worker mid-search leaves the search to
finish every trial (Tune's FailureConfig retries the lost trial on the surviving node, logging into
the same MLflow run), and no trial's metrics, rung history or artifacts are lost.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytestmark = pytest.mark.slow

TRIALS = 16
"""Two trials for each of the eight slots. A worker's first trial to end is replaced at once (a
trial is still waiting unless the other worker finished eight first), so the worker runs another
one after it has one on record, and the kill below always comes. With 12 trials the last four
could all land on the other worker's slots, and the worker was then never killed."""
CONCURRENT = 8
EPOCHS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` as ray_cluster.yaml starts it on the head: sqlite runs, proxied artifacts."""
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination",
        str(tmp_path / "mlartifacts"),
    ]
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield uri
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def test_search_on_a_cluster_logging_to_a_tracking_server(workdir, mlflow_server):
    import ray
    from mlflow import MlflowClient
    from ray.cluster_utils import Cluster

    from squeezetune.search.config import SearchConfig
    from squeezetune.search.runner import run_search

    c = MlflowClient(mlflow_server)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=CONCURRENT // 2), cluster.add_node(num_cpus=CONCURRENT // 2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 3

        killed = threading.Event()
        dead: list[tuple[str, list[str]]] = []
        most_running = [0]

        def watch_and_kill_one_worker() -> None:
            deadline = time.monotonic() + 600
            node = workers[1].node_id
            while time.monotonic() < deadline and not killed.is_set():
                try:
                    runs = c.search_runs([c.get_experiment_by_name("squeezetune").experiment_id], filter_string="tags.`squeezetune.role` = 'trial'")
                except Exception:
                    time.sleep(0.5)
                    continue
                running = [r for r in runs if r.info.status == "RUNNING" and r.data.tags.get("squeezetune.node")]
                most_running[0] = max(most_running[0], len(running))
                on_node = [r.info.run_id for r in running if r.data.tags["squeezetune.node"] == node]
                # the worker has finished a trial (so both nodes are on record) and runs another: kill it.
                # The run is FINISHED in MLflow a moment before Tune takes the trial's last result; a
                # kill in between retries that trial elsewhere, so wait until it has settled.
                settled = time.time() * 1000 - 5000
                finished_there = any(r.info.status == "FINISHED" and r.data.tags.get("squeezetune.node") == node and (r.info.end_time or settled + 1) <= settled for r in runs)
                if on_node and finished_there and most_running[0] >= CONCURRENT:
                    dead.append((node, on_node))
                    cluster.remove_node(workers[1], allow_graceful=False)
                    killed.set()
                    return
                time.sleep(0.3)

        watcher = threading.Thread(target=watch_and_kill_one_worker, daemon=True)
        watcher.start()
        config = SearchConfig.from_dict(
            {
                "name": "cluster",
                "trials": TRIALS,
                "tracking_uri": mlflow_server,
                "max_concurrent": CONCURRENT,
                "max_failures": 3,
                "fidelity": {"epochs": EPOCHS, "centroid_epochs": 1, "min_epochs": 1, "early_stopping": False},
                "warm_start": [],
                "space": {},  # the light one-shot space: eight trials share two cores, and the nodes must keep their heartbeats
            }
        )
        outcome = run_search(config)
        watcher.join(5)
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert most_running[0] >= CONCURRENT, f"at most {most_running[0]} trials ran at once"
    assert killed.is_set(), "the worker was never killed mid-search"
    dead_node, lost_runs = dead[0]
    assert outcome.finished and outcome.counts["complete"] == TRIALS and outcome.counts["failed"] == 0
    assert len(outcome.nodes) >= 2, outcome.nodes

    exp = c.get_experiment_by_name("squeezetune")
    children = c.search_runs([exp.experiment_id], filter_string="tags.`squeezetune.role` = 'trial'")
    assert len(children) == TRIALS and all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.tags["squeezetune.node"] for r in children}) >= 2
    for run_id in lost_runs:
        lost = next(r for r in children if r.info.run_id == run_id)
        assert int(lost.data.tags["squeezetune.attempts"]) >= 2  # retried, into the same run
        assert lost.data.tags["squeezetune.node"] != dead_node
    expected = {"accuracy", "val_accuracy", "bytes", "ratio", "dense_accuracy", "stage.prune.accuracy", "stage.finetune.bytes", "layer.fc1.kept", "layer.fc3.coded_bytes"}
    for r in children:  # no metric lost: the whole report, the rung history, and the artifacts through the server
        assert expected <= set(r.data.metrics), sorted(expected - set(r.data.metrics))
        assert sorted({m.step for m in c.get_metric_history(r.info.run_id, "val_accuracy")}) == [1, EPOCHS]
        assert {a.path for a in c.list_artifacts(r.info.run_id)} >= {"model.sqz", "model.report.json", "recipe.yaml"}
    parent = c.search_runs([exp.experiment_id], filter_string="tags.`squeezetune.role` = 'parent'")[0]
    assert {a.path for a in c.list_artifacts(parent.info.run_id, "front")} >= {"front/front.json", "front/front.png"}
