"""The command line end to end, on the built-in digits task (no files needed) and real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from squeezetune.cli import main

QUICK = """\
name: quick
prune:
  layers: {fc1: {keep_fraction: 0.1}, fc2: {keep_fraction: 0.2}, fc3: {keep: 500}}
finetune: {epochs: 2, lr: 0.01}
share:
  init: density
  default: {bits: 4}
finetune_centroids: {epochs: 1, lr: 0.001}
encode: {index_bits: 5, coder: auto}
"""


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    import os

    os.environ["SQUEEZETUNE_CACHE"] = str(tmp / "cache")
    recipe = tmp / "quick.yaml"
    recipe.write_text(QUICK)
    out = tmp / "m.sqz"
    assert main(["compress", "--task", "lenet300-digits", "--recipe", str(recipe), "--out", str(out)]) == 0
    return out


def test_compress_writes_container_and_report(compressed):
    report = json.loads(compressed.with_name("m.report.json").read_text())
    for key in ("task", "dense_accuracy", "accuracy", "dense_bytes", "compressed_bytes", "ratio", "stages", "tensors"):
        assert key in report
    assert report["compressed_bytes"] == compressed.stat().st_size
    assert report["dense_bytes"] == 4 * (784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10)
    assert report["ratio"] == pytest.approx(report["dense_bytes"] / compressed.stat().st_size)
    assert 0.0 <= report["accuracy"] <= 1.0 and report["accuracy"] > 0.8
    assert [s["stage"] for s in report["stages"]] == ["dense", "prune", "finetune", "share", "finetune_centroids", "encode"]
    layers = {t["name"]: t for t in report["tensors"] if t["action"] != "raw"}
    assert layers["fc1"]["kept"] == round(0.1 * 784 * 300) and layers["fc3"]["kept"] == 500
    assert all(2 <= layer["clusters"] <= 16 for layer in layers.values())
    # the recipe's 5-bit width holds for index symbols; a tensor whose positions code smaller as a bitmask has none
    assert all(layer["index_bits"] == (0 if layer["streams"]["positions"]["coding"] == "bitmask" else 5) for layer in layers.values())
    raw = {t["name"]: t["why"] for t in report["tensors"] if t["action"] == "raw"}
    assert set(raw) == {"fc1.bias", "fc2.bias", "fc3.bias"} and all("1-D" in why for why in raw.values())


@pytest.mark.parametrize("recipe", ["filter-pruning", "channel-pruning"])
def test_structured_builtin_shrinks_the_model_to_the_macs_target(compressed, recipe, capsys):
    out = compressed.with_name(f"{recipe}.sqz")  # the dense model cached by ``compressed`` is reused
    assert main(["compress", "--recipe", recipe, "--macs-target", "0.5", "--out", str(out)]) == 0
    report = json.loads(out.with_name(f"{recipe}.report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["dense", "structured", "structured_finetune", "encode"]
    assert report["macs"] <= 0.55 * report["dense_macs"] and report["params"] < report["dense_params"]
    assert report["compressed_bytes"] == out.stat().st_size < report["dense_bytes"]
    assert report["accuracy"] > 0.8
    assert report["speedup_b64_low"] <= report["speedup_b64"] <= report["speedup_b64_high"] and report["latency_threads"] == 1
    out = capsys.readouterr().out
    assert "MACs" in out and "CPU latency, 1 thread: b1 " in out and "speed-up" in out


def test_evaluate_and_decode_agree_with_the_report(compressed, tmp_path, capsys):
    report = json.loads(compressed.with_name("m.report.json").read_text())
    assert main(["evaluate", str(compressed)]) == 0
    assert f"accuracy {report['accuracy']:.4f}" in capsys.readouterr().out
    out = tmp_path / "w.safetensors"
    assert main(["decode", str(compressed), "--out", str(out)]) == 0
    from safetensors.torch import load_file

    weights = load_file(out)
    assert int((weights["fc1.weight"] != 0).sum()) == report["tensors"][0]["kept"]
    assert len(torch.unique(weights["fc2.weight"])) <= 17  # 16 shared values and the pruned zeros


def test_inspect_prints_every_layer(compressed, capsys):
    assert main(["inspect", str(compressed)]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("fc1", "fc2", "fc3")) and "lenet300-digits" in out


def _damaged(compressed: Path, tmp_path: Path) -> dict[str, Path]:
    data = compressed.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    files = {
        "truncated": data[: len(data) - 7],
        "flipped": bytes(flipped),
        "foreign": b"PK\x03\x04" + b"\0" * 60,
        "version": data[:4] + bytes([data[4] + 6]) + data[5:],
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.sqz"
        paths[name].write_bytes(content)
    return paths


@pytest.mark.parametrize("kind", ["truncated", "flipped", "foreign", "version"])
@pytest.mark.parametrize("command", ["inspect", "evaluate", "decode"])
def test_damaged_files_are_one_line_errors(compressed, tmp_path, capsys, kind, command):
    path = _damaged(compressed, tmp_path)[kind]
    args = [command, str(path)] + (["--out", str(tmp_path / "w.safetensors")] if command == "decode" else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "w.safetensors").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["compress", "--task", "lenet9-mnist"], "unknown task 'lenet9-mnist'"),
        (["compress", "--task", "lenet300-mnist"], "needs --data-dir"),
        (["compress", "--task", "lenet300-mnist", "--data-dir", "/nonexistent/mnist"], "data dir '/nonexistent/mnist' does not exist"),
        (["compress", "--recipe", "RECIPE:prune: {layers: {fc9: {keep: 3}}}"], "unknown layer 'fc9'"),
        (["compress", "--recipe", "RECIPE:prune: {layers: {fc3: {keep: 1001}}}"], r"keep=1001 for layer 'fc3' must be an integer in [1, 1000]"),
        (["compress", "--recipe", "RECIPE:share: {layers: {fc3: {clusters: 1}}}"], "clusters=1 must be an integer in [2, 65536]"),
        (["compress", "--recipe", "RECIPE:prune: {layers: {fc3: {keep: 10}}}\nshare: {layers: {fc3: {clusters: 11}}}"], "k=11 clusters for layer 'fc3' must be an integer in [2, 10]"),
        (["compress", "--macs-target", "0.5"], "recipe 'deep-compression' has no structured stage"),
        (["compress", "--recipe", "channel-pruning", "--macs-target", "0"], "macs_target=0.0 must be in (0, 1]"),
        (["compress", "--recipe", "filter-pruning", "--allocation", "best"], "--allocation 'best': expected uniform or sensitivity"),
        (["compress", "--recipe", "filter-pruning", "--cost", "speed"], "--cost='speed' is not known: expected one of ['macs', 'latency']"),
        (["compress", "--recipe", "RECIPE:structured: {method: l1, layers: {fc3: {keep: 5}}}"], "layer 'fc3' cannot be pruned structurally"),
        (["compress", "--latency-threads", "0"], "latency threads=0 must be an integer >= 1"),
        (["compress", "--latency-budget", "-1"], "latency budget_s=-1.0 must be a number of seconds >= 0"),
        (["inspect", "/nonexistent.sqz"], "/nonexistent.sqz"),
    ],
)
def test_bad_input_is_one_line_without_output(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("SQUEEZETUNE_CACHE", str(tmp_path / "cache"))
    args = list(args)
    for i, a in enumerate(args):
        if a.startswith("RECIPE:"):
            (tmp_path / "r.yaml").write_text(a[len("RECIPE:") :])
            args[i] = str(tmp_path / "r.yaml")
    out = tmp_path / "bad.sqz"
    if args[0] == "compress":
        args += ["--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert message in err
    assert not out.exists() and not list(tmp_path.glob("*.report.json"))
    assert not (tmp_path / "cache").exists()  # refused before any dense training


def test_console_script_shows_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("squeezetune")
    proc = subprocess.run([str(exe), "inspect", str(tmp_path / "missing.sqz")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_evaluate_on_another_task_than_the_files_says_so(compressed, mnist_dir, capsys):
    assert main(["evaluate", str(compressed), "--task", "lenet300-mnist", "--data-dir", str(mnist_dir)]) == 0
    out, err = capsys.readouterr()
    assert "was made for task 'lenet300-digits'; measuring it on 'lenet300-mnist'" in err
    assert "on 2000 lenet300-mnist images" in out
