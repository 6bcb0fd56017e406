"""A trial's rung report: the figures a scheduler reads before the trial ends."""

from __future__ import annotations

import torch
from torch import nn

from squeezetune.compression import EpochEvent
from squeezetune.search.trial import TrialSetup, _Rungs
from squeezetune.tasks import Split


class _Client:
    def __init__(self) -> None:
        self.logged: list = []

    def log_batch(self, run_id, metrics) -> None:
        self.logged.append({m.key: m.value for m in metrics})


def test_a_rung_times_the_decoded_model_alone_when_latency_counts():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g))
    setup = TrialSetup(search="s", task="t", tracking_uri="", space={}, rungs=(1,), latency=True)
    client, reported = _Client(), []
    rungs = _Rungs(setup, (split, split, split), split.x[:1], 1000, client, "run", reported.append, {"mlflow": 0.0})
    rungs(EpochEvent("finetune", 1, 2, 0.5, model, lambda: (model, 100)))
    figures = reported[0]
    assert figures["latency_ms_b1"] > 0 and figures["latency_ms_b64"] > 0 and figures["latency_threads"] == 1
    assert not [k for k in figures if k.startswith(("dense_", "speedup"))]  # nothing to compare with at a rung
    assert client.logged[0]["latency_ms_b64"] == figures["latency_ms_b64"]
