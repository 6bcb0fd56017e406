"""Watching a search driver that runs in a child process, through its Optuna sqlite study."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pytest


def study_states(db: Path) -> list[str]:
    """The states of an Optuna sqlite study's trials in trial order, read while a search writes it."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return [s for (s,) in con.execute("select state from trials order by number")]
    except sqlite3.Error:
        return []


def wait_for_finished_and_running(driver: subprocess.Popen, db: Path, log: Path, timeout: float = 300) -> None:
    """Wait until the search ``driver`` has a COMPLETE trial and a RUNNING one; fail if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = study_states(db)
        if states.count("COMPLETE") >= 1 and "RUNNING" in states:
            return
        assert driver.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    pytest.fail("the search never had a finished trial and a running one")
