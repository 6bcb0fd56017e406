"""Fixtures for search tests: a scratch working folder per module (mlflow.db and optuna.db land
there) and a shared dense-baseline cache, so each module trains lenet300-digits at most once."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def search_cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("squeezetune-cache")
    old = os.environ.get("SQUEEZETUNE_CACHE")
    os.environ["SQUEEZETUNE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SQUEEZETUNE_CACHE", None)
    else:
        os.environ["SQUEEZETUNE_CACHE"] = old


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, search_cache) -> Path:
    path = tmp_path_factory.mktemp("search")
    old = os.getcwd()
    os.chdir(path)
    yield path
    os.chdir(old)


@pytest.fixture(scope="session")
def cli():
    """``cli(args) -> (exit code, stdout, stderr)``: the squeezetune CLI run in this process."""
    return run_cli


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """Run the squeezetune CLI in this process; returns (exit code, stdout, stderr)."""
    from squeezetune.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()
