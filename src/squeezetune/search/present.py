"""Presenting a front: text table, CSV/JSON rows, a matplotlib PNG and an interactive plotly HTML.

Everything here takes points already computed by :func:`~squeezetune.search.pareto.pareto_front`;
nothing recomputes the front.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

from squeezetune.search.pareto import Baseline, Point

COLUMNS = ["trial", "val_accuracy", "accuracy", "drop_points", "bytes", "ratio", "epochs", "feasible", "run_id"]
"""``val_accuracy``: on the validation split the front was selected on; ``accuracy`` and
``drop_points`` (against the dense model): on the evaluation images, which no selection has seen;
``epochs``: the epochs of the fidelity stage the trial reached. A search with a third objective
(``Baseline.also_minimised``, a latency figure) adds a column for it after ``ratio``."""


def columns(baseline: Baseline) -> list[str]:
    at = COLUMNS.index("ratio") + 1
    return [*COLUMNS[:at], *baseline.also_minimised, *COLUMNS[at:]]


def rows(front: Sequence[Point], baseline: Baseline) -> list[dict]:
    out = []
    for p in front:
        held = p.extra.get("eval_accuracy", p.accuracy)
        out.append(
            {
                "trial": p.trial,
                "val_accuracy": round(p.accuracy, 6) if "eval_accuracy" in p.extra else None,
                "accuracy": round(held, 6),
                "drop_points": round(100.0 * (baseline.accuracy - held), 4),
                "bytes": int(p.bytes),
                "ratio": round(baseline.bytes / p.bytes, 3),
                **{k: (round(float(p.extra[k]), 4) if k in p.extra else None) for k in baseline.also_minimised},
                "epochs": p.extra.get("epoch") or None,  # 0: a search without a fidelity stage
                "feasible": p.feasible,
                "run_id": p.run_id,
            }
        )
    return out


def table(front: Sequence[Point], baseline: Baseline) -> str:
    """The front as aligned text, smallest file first, with the dense model as the last line."""
    extra = baseline.also_minimised
    lines = [f"{'trial':>5} {'val acc':>8} {'accuracy':>9} {'drop pt':>8} {'bytes':>10} {'ratio':>7} {''.join(k.rjust(_width(k)) + ' ' for k in extra)}{'epochs':>6}  run"]

    def num(v, fmt: str) -> str:
        return format(v, fmt) if v is not None else "-"

    for r in rows(front, baseline):
        lines.append(
            f"{r['trial']:>5} {num(r['val_accuracy'], '>8.4f'):>8} {r['accuracy']:>9.4f} {r['drop_points']:>8.2f} {r['bytes']:>10,} {r['ratio']:>6.1f}x "
            f"{''.join(num(r[k], '.3f').rjust(_width(k)) + ' ' for k in extra)}{num(r['epochs'], '>6.0f'):>6}  {r['run_id'] or '-'}"
        )
    lines.append(f"{'dense':>5} {num(baseline.val_accuracy, '>8.4f'):>8} {baseline.accuracy:>9.4f} {0.0:>8.2f} {baseline.bytes:>10,} {1.0:>6.1f}x")
    return "\n".join(lines)


def _width(column: str) -> int:
    return max(8, len(column))


def to_csv(front: Sequence[Point], baseline: Baseline) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns(baseline))
    w.writeheader()
    w.writerows(rows(front, baseline))
    return buf.getvalue()


def to_json(front: Sequence[Point], points: Sequence[Point], baseline: Baseline, **extra) -> str:
    return json.dumps(
        {
            "dense_accuracy": baseline.accuracy,
            "dense_val_accuracy": baseline.val_accuracy,
            "dense_bytes": baseline.bytes,
            "objectives": ["accuracy", "bytes", *baseline.also_minimised],
            **extra,
            "front": rows(front, baseline),
            "trials": len(points),
        },
        indent=2,
    )


def plot_png(front: Sequence[Point], points: Sequence[Point], path: Path, baseline: Baseline, *, title: str = "") -> None:
    """Accuracy against bytes (log x): every trial faded, the front drawn as a step line (accuracy
    on the split the front was selected on)."""
    dense_accuracy, dense_bytes = baseline.selected, baseline.bytes
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    on_front = {p.trial for p in front}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    others = [p for p in points if p.trial not in on_front]
    if others:
        ax.scatter([p.bytes for p in others], [100 * p.accuracy for p in others], c="tab:gray", alpha=0.35, s=18, label="dominated")
    if front:
        xs, ys = [p.bytes for p in front], [100 * p.accuracy for p in front]
        if not baseline.also_minimised:  # over a third objective, front points need not rise with bytes
            ax.step(xs, ys, where="post", c="tab:blue", lw=1.2)
        ax.scatter(xs, ys, c="tab:blue", s=30, label=_front_label(baseline), zorder=3)
        for p in front:
            ax.annotate(str(p.trial), (p.bytes, 100 * p.accuracy), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.axhline(100 * dense_accuracy, c="tab:red", ls="--", lw=0.8, label=f"dense ({dense_bytes:,} B)")
    ax.set_xscale("log")
    ax.set_xlabel("container bytes (log)")
    ax.set_ylabel("accuracy of the decoded model (%)")
    ax.set_title(title or "Pareto front")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_html(front: Sequence[Point], points: Sequence[Point], path: Path, baseline: Baseline, *, title: str = "") -> None:
    """The same plot with plotly, self-contained (works offline): hover shows trial, bytes, ratio, run."""
    dense_accuracy, dense_bytes = baseline.selected, baseline.bytes
    import plotly.graph_objects as go

    on_front = {p.trial for p in front}

    def trace(pts: Sequence[Point], name: str, **kw) -> go.Scatter:
        return go.Scatter(
            x=[p.bytes for p in pts],
            y=[100 * p.accuracy for p in pts],
            name=name,
            text=[
                f"trial {p.trial}<br>{p.bytes:,} B ({dense_bytes / p.bytes:.1f}x)<br>acc {100 * p.accuracy:.2f}%"
                + "".join(f"<br>{k} {p.extra[k]:.3f}" for k in baseline.also_minimised if k in p.extra)
                + f"<br>run {p.run_id}"
                for p in pts
            ],
            hoverinfo="text",
            **kw,
        )

    fig = go.Figure()
    fig.add_trace(trace([p for p in points if p.trial not in on_front], "dominated", mode="markers", marker={"color": "gray", "opacity": 0.3, "size": 7}))
    mode = "markers" if baseline.also_minimised else "lines+markers"
    fig.add_trace(trace(list(front), _front_label(baseline), mode=mode, line={"shape": "hv", "color": "#1f77b4"}, marker={"size": 9}))
    fig.add_hline(y=100 * dense_accuracy, line_dash="dash", line_color="red", annotation_text=f"dense {dense_bytes:,} B")
    fig.update_layout(title=title or "Pareto front", xaxis={"type": "log", "title": "container bytes (log)"}, yaxis={"title": "accuracy of the decoded model (%)"}, template="plotly_white")
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)


def _front_label(baseline: Baseline) -> str:
    return f"Pareto front (also over {', '.join(baseline.also_minimised)})" if baseline.also_minimised else "Pareto front"
