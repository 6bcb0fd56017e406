"""MLflow bookkeeping of a search: one parent run per search, one child run per trial.

The embedded default store is ``sqlite:///<cwd>/mlflow.db`` with artifacts in ``<cwd>/mlartifacts``;
``--tracking-uri http://host:5000`` points at a server instead. A server is probed with a short
timeout first, so an unreachable one is a one-line error, not a hang.

Runs are found by tags, never by name: the parent carries ``squeezetune.search=<name>`` and
``squeezetune.role=parent``; each child carries ``mlflow.parentRunId``, ``squeezetune.search``,
``squeezetune.trial`` (the Optuna trial number) and, once the front is computed, ``pareto``.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar
from urllib.parse import urlparse

from squeezetune.errors import SqueezeError

SEARCH_TAG = "squeezetune.search"
ROLE_TAG = "squeezetune.role"
TRIAL_TAG = "squeezetune.trial"
PARENT_TAG = "mlflow.parentRunId"
CONFIG_ARTIFACT = "search_config.json"

T = TypeVar("T")


def default_tracking_uri(cwd: str | Path | None = None) -> str:
    """``sqlite:///<abs cwd>/mlflow.db``."""
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI to use: the given one (relative sqlite paths made absolute) or the default."""
    if uri is None or uri == "":
        return default_tracking_uri()
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        if not uri.startswith("sqlite:///") or len(uri) == len("sqlite:///"):
            raise SqueezeError(f"tracking URI {uri!r}: expected sqlite:///<path to .db>")
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
    if parsed.scheme in ("http", "https", "databricks"):
        return uri
    raise SqueezeError(f"tracking URI {uri!r} is not supported: expected sqlite:///<path>.db or http(s)://host:port (a plain ./mlruns file store is refused by MLflow 3.17)")


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]).resolve() if uri.startswith("sqlite:///") else None


def probe(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with one line, if the tracking store cannot be reached or written."""
    db = sqlite_path(uri)
    if db is not None:
        if not db.parent.is_dir():
            raise SqueezeError(f"tracking store {uri!r}: folder {str(db.parent)!r} does not exist")
        if not os.access(db.parent, os.W_OK):
            raise SqueezeError(f"tracking store {uri!r}: folder {str(db.parent)!r} is not writable")
        return
    if uri.startswith("databricks"):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) only, checked above
            if resp.status >= 400:
                raise SqueezeError(f"tracking server {uri!r} answered HTTP {resp.status} on /health")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # a server without /health: try the REST API
            _probe_api(uri, timeout)
            return
        raise SqueezeError(f"tracking server {uri!r} answered HTTP {exc.code} on /health") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SqueezeError(f"tracking server {uri!r} is unreachable ({reason}; waited at most {timeout:g}s): start it or pass another --tracking-uri") from None


def _probe_api(uri: str, timeout: float) -> None:
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310
            return
    except (urllib.error.URLError, OSError) as exc:
        raise SqueezeError(f"tracking server {uri!r} does not answer MLflow's REST API ({getattr(exc, 'reason', exc)})") from None


def runs_page(base: str, exp_id: str | None) -> str:
    """The UI page of an experiment's runs table, in its model-training view.

    MLflow 3.17's UI opens in its GenAI view unless told otherwise (its global view switch wins over
    the experiment's kind tag), so the address asks for ``workflowType=machine_learning``.
    """
    return f"{base.rstrip('/')}/#/experiments/{exp_id}/runs?workflowType=machine_learning" if exp_id else base


def ui_command(uri: str, exp_id: str | None = None) -> str:
    """The command (or address) that opens this store in the MLflow UI, and the page to open.

    The ``mlflow`` beside this interpreter is named by its path unless it is the one on ``PATH``,
    so the line runs as printed from a virtualenv that is not activated.
    """
    if sqlite_path(uri) is None:
        return f"browse the MLflow UI at {runs_page(uri, exp_id)}"
    import shlex
    import shutil
    import sys

    exe = Path(sys.executable).with_name("mlflow")
    on_path = shutil.which("mlflow")
    mlflow = "mlflow" if not exe.exists() or (on_path is not None and Path(on_path).resolve() == exe.resolve()) else str(exe)
    return f"browse the results: {shlex.quote(mlflow)} ui --backend-store-uri {shlex.quote(uri)}  then open {runs_page('http://127.0.0.1:5000', exp_id)}"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: ``<db folder>/mlartifacts`` for sqlite; the server's choice otherwise."""
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None


def retry(fn: Callable[[], T], attempts: int = 8, delay: float = 0.25) -> T:
    """Call ``fn``, retrying briefly when sqlite reports a locked database (concurrent trials)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # MlflowException / OperationalError wrap the sqlite message
            if "locked" not in str(exc).lower() or i == attempts - 1:
                raise
            time.sleep(delay * (i + 1))
    raise AssertionError("unreachable")


def client(uri: str):
    # progress bars of artifact downloads would precede (and bury) a one-line error
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
"""The experiment kind that makes the MLflow UI open the runs table and charts (not its GenAI view)."""


def experiment_id(c, name: str, uri: str, *, create: bool = True) -> str | None:
    """The experiment's id, created (on the driver, before any trial) when missing and ``create``.

    A search's experiment is marked as model training (:data:`KIND_TAG`), so the UI opens it in the
    runs table with the trials nested under their search.
    """
    exp = c.get_experiment_by_name(name)
    if exp is None and not create:
        return None
    if exp is None:
        try:
            return c.create_experiment(name, artifact_location=artifact_location(uri), tags={KIND_TAG: MODEL_TRAINING})
        except Exception:
            exp = c.get_experiment_by_name(name)  # created concurrently
            if exp is None:
                raise
    if create and exp.tags.get(KIND_TAG) is None:
        retry(lambda: c.set_experiment_tag(exp.experiment_id, KIND_TAG, MODEL_TRAINING))
    return exp.experiment_id


def find_parent(c, exp_id: str, search: str):
    """The parent run of search ``search``, or ``None``."""
    runs = c.search_runs([exp_id], filter_string=f"tags.`{SEARCH_TAG}` = '{search}' and tags.`{ROLE_TAG}` = 'parent'", max_results=2)
    return runs[0] if runs else None


def find_search(uri: str, experiment: str, search: str):
    """``(client, experiment id, parent run)`` of an existing search; a one-line error if there is none.

    Reading never creates a store: a sqlite file that does not exist (a command run from another
    folder than the search's) is an error, not a new empty ``mlflow.db``.
    """
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise SqueezeError(f"no MLflow store at {str(db)!r} to find search {search!r} in: run from the folder that holds the search's mlflow.db, or pass --tracking-uri")
    c = client(uri)
    exp_id = experiment_id(c, experiment, uri, create=False)
    parent = find_parent(c, exp_id, search) if exp_id is not None else None
    if parent is None:
        known = list_searches(c, exp_id) if exp_id is not None else []
        raise SqueezeError(f"no search named {search!r} in {uri} (experiment {experiment!r}): expected one of {known}")
    return c, exp_id, parent


def list_searches(c, exp_id: str) -> list[str]:
    runs = c.search_runs([exp_id], filter_string=f"tags.`{ROLE_TAG}` = 'parent'", max_results=200)
    return sorted(r.data.tags.get(SEARCH_TAG, "?") for r in runs)


def children(c, exp_id: str, parent_id: str) -> list:
    """Every trial run of a search's parent run, oldest first (export runs, also its children, are left out)."""
    out, token = [], None
    where = f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{ROLE_TAG}` = 'trial'"
    while True:
        page = c.search_runs([exp_id], filter_string=where, max_results=1000, page_token=token, order_by=["attributes.start_time ASC"])
        out += list(page)
        token = page.token
        if not token:
            return out


def log_json(c, run_id: str, data: Any, artifact_file: str) -> None:
    retry(lambda: c.log_text(run_id, json.dumps(data, indent=2, default=str), artifact_file))


def params_batch(params: dict[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in params.items()]


def metrics_batch(metrics: dict[str, float], step: int = 0) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in metrics.items()]


def set_tags(c, run_ids: Iterable[str], key: str, value: str) -> None:
    for rid in run_ids:
        retry(lambda rid=rid: c.set_tag(rid, key, value))
