"""A search's live status: trials done, running and stopped, front size, best ratio within max_drop.

On a terminal it is a progress bar at the bottom of the screen (rich), with a line per finished
trial and per rung report above it; elsewhere (a log file, CI) each update is one plain line.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from squeezetune.search.pareto import Baseline, Point, best_ratio

Progress = Callable[[str], None]


class SearchStatus:
    def __init__(self, trials: int, baseline: Baseline, max_drop: float | None, progress: Progress, *, live: bool | None = None) -> None:
        self.trials, self.baseline, self.max_drop, self.progress = trials, baseline, max_drop, progress
        self._started: set = set()  # trial numbers Ray started in this session
        self._ended: set = set()  # and those told to Optuna since
        self.counts: dict[str, int] = {"complete": 0, "stopped": 0, "failed": 0}
        self.front: Sequence[Point] = ()
        self._bar = None
        if live if live is not None else sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True)
            self._task = self._bar.add_task(self.summary(), total=trials)
            self._bar.start()

    @property
    def running(self) -> int:
        """Trials started and not yet told (Ray's completion callback comes after the tell)."""
        return len(self._started - self._ended)

    def summary(self) -> str:
        n = self.counts
        text = f"{n['complete']} complete, {n['stopped']} stopped, {n['failed']} failed, {self.running} running; front {len(self.front)}"
        if self.front:
            drop = self.max_drop if self.max_drop is not None else 0.0
            best = best_ratio(self.front, dense_bytes=self.baseline.bytes, dense_accuracy=self.baseline.selected, max_drop=drop)
            within = f"within {drop:g} pt" if self.max_drop is not None else "at no validation loss"
            text += f"; best {self.baseline.bytes / best.bytes:.1f}x {within}" if best is not None else f"; none {within} yet"
        return text

    def say(self, line: str) -> None:
        if self._bar is not None:
            self._bar.console.print(line, highlight=False, markup=False)
            self._bar.update(self._task, completed=sum(self.counts.values()), description=self.summary())
        else:
            self.progress(f"{line}  [{sum(self.counts.values())}/{self.trials} done: {self.summary()}]")

    def told(self, frozen, counts: dict[str, int], front: Sequence[Point]) -> None:
        """A trial was told to Optuna (complete, stopped or failed)."""
        import optuna

        self.counts = {k: counts[k] for k in ("complete", "stopped", "failed")}
        self.front = front
        if frozen is None:
            return
        self._ended.add(frozen.number)
        a = frozen.user_attrs
        if frozen.state == optuna.trial.TrialState.COMPLETE:
            what = f"{_accuracies(a)}, {int(a['bytes']):,} bytes ({self.baseline.bytes / a['bytes']:.1f}x) after the full schedule"
        elif frozen.state == optuna.trial.TrialState.PRUNED:
            rung = {k.removeprefix("rung_"): v for k, v in a.items() if k.startswith("rung_")}
            what = f"stopped at {a.get('stopped_at', '?')} epochs ({_accuracies(rung)}, {int(rung.get('bytes', 0)):,} bytes)"
        else:
            what = f"FAILED: {a.get('error', '?')}"
        self.say(f"trial {frozen.number}: {what}")

    def callback(self):
        """A Ray Tune callback that keeps the running count and reports each rung."""
        from ray.tune import Callback

        status = self

        class _Status(Callback):
            def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
                status._started.add(trial.config.get("_trial"))
                status.say(f"trial {trial.config.get('_trial', '?')}: started")

            def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
                if not result.get("final") and result.get("epoch") and "bytes" in result:
                    status.say(f"trial {result.get('trial', '?')}: {result['epoch']} epochs, {_accuracies(result)}, {int(result['bytes']):,} bytes")

        return _Status()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _accuracies(figures: dict) -> str:
    val = figures.get("val_accuracy")
    held = figures.get("accuracy")
    if val is None:
        return f"accuracy {held:.4f}" if held is not None else "accuracy ?"
    return f"val {val:.4f} / eval {held:.4f}" if held is not None else f"val {val:.4f}"
