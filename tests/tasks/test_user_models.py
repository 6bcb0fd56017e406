"""A user's own models through ``--task module:factory``: a 3x32x32 CNN and a Conv1d net, each through
``compress`` (deep-compression, and channel-pruning where the graph allows) and a real search, with
every weight tensor compressed. The module is written as a user would write it, on generated data."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

MODULE = """\
import torch
from torch import nn

from squeezetune.tasks import Split, Task


class RGB(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


class Wave(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv1d(2, 8, 5, padding=2), nn.ReLU(), nn.Conv1d(8, 16, 5, padding=2), nn.ReLU(), nn.Conv1d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.convs(x).mean(2))


def _rgb(_):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(480, 3, 32, 32, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1, :16].mean((1, 2)) > 0).long()
    return Split(x[:400], y[:400]), Split(x[400:], y[400:])


def _wave(_):
    g = torch.Generator().manual_seed(1)
    t = torch.linspace(0, 6.28, 48)
    y = torch.randint(0, 3, (480,), generator=g)
    x = torch.stack([torch.sin(t * (1 + y[:, None])), torch.cos(t * (1 + y[:, None]))], 1) + 0.3 * torch.randn(480, 2, 48, generator=g)
    return Split(x[:400], y[:400]), Split(x[400:], y[400:])


def rgb():
    return Task(name="user-rgb", model="user-rgb", build_model=RGB, load_data=_rgb, epochs=3, lr=0.05)


def wave():
    return Task(name="user-wave", model="user-wave", build_model=Wave, load_data=_wave, epochs=3, lr=0.05, example=lambda: torch.zeros(1, 2, 48))
"""

FAST = """\
stages:
  - {recipe}
  - finetune: {{epochs: 1, distill: true}}
encode: {{coder: auto}}
"""


@pytest.fixture
def cli():
    from tests.search.conftest import run_cli

    return run_cli


@pytest.fixture
def user_module(tmp_path, monkeypatch, cache_dir):
    name = f"usermodels_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    return name


@pytest.mark.parametrize("factory", ["rgb", "wave"])
def test_compress_and_channel_prune_a_users_model(user_module, factory, cli, tmp_path):
    task = f"{user_module}:{factory}"
    code, out, err = cli(["compress", "--task", task, "--out", str(tmp_path / "dc.sqz")])
    assert code == 0, err
    report = json.loads((tmp_path / "dc.report.json").read_text())
    weights = [t for t in report["tensors"] if len(t["shape"]) >= 2]
    assert weights and all(t["action"] == "pruned+shared" for t in weights), [(t["name"], t["action"], t["why"]) for t in weights]
    assert report["compressed_bytes"] == (tmp_path / "dc.sqz").stat().st_size
    code, out, err = cli(["compress", "--task", task, "--recipe", "channel-pruning", "--macs-target", "0.75", "--out", str(tmp_path / "cp.sqz")])
    assert code == 0, err
    report = json.loads((tmp_path / "cp.report.json").read_text())
    assert report["macs"] < report["dense_macs"] and report["params"] < report["dense_params"]
    code, out, err = cli(["inspect", str(tmp_path / "dc.sqz")])
    assert code == 0 and "raw" in out  # the biases, with why


@pytest.mark.parametrize("factory", ["rgb", "wave"])
def test_search_a_users_model(user_module, factory, cli, tmp_path):
    config = tmp_path / "s.yaml"
    config.write_text(f"task: {user_module}:{factory}\nname: user-{factory}\ntrials: 6\nmax_concurrent: 2\nfidelity: {{epochs: 2, centroid_epochs: 1, min_epochs: 1}}\n")
    code, out, err = cli(["search", "--config", str(config)])
    assert code == 0, err
    assert "Pareto front" in out and "warm starts: 1 recipe and 4 neighbours" in err  # then one sampled trial
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.get_experiment_by_name("squeezetune")
    done = [r for r in c.search_runs([exp.experiment_id], filter_string="tags.`squeezetune.role` = 'trial'") if r.info.status == "FINISHED"]
    assert done
    for run in done:  # every weight tensor has its knobs and is coded
        kept = {k for k in run.data.metrics if k.startswith("layer.") and k.endswith(".kept")}
        assert len(kept) == (3 if factory == "rgb" else 4), kept
