"""get_task: built-in names, and module:factory strings found in the working folder as well."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from squeezetune.errors import SqueezeError
from squeezetune.tasks import Task, get_task

MODULE = """\
from squeezetune.tasks import get_task

def make():
    return get_task("lenet300-digits")

def broken():
    raise RuntimeError("no data here")

def wrong():
    return 42
"""


@pytest.fixture
def module_in_cwd(tmp_path, monkeypatch):
    name = f"usertasks_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    return name


def test_factory_module_in_the_working_folder_is_found(module_in_cwd):
    assert isinstance(get_task(f"{module_in_cwd}:make"), Task)


@pytest.mark.parametrize(
    "attr, message",
    [("broken", "raised RuntimeError: no data here"), ("wrong", "returned int: expected a squeezetune.tasks.Task"), ("missing", "cannot load task factory")],
)
def test_factory_errors_are_one_line(module_in_cwd, attr, message):
    with pytest.raises(SqueezeError, match=message) as info:
        get_task(f"{module_in_cwd}:{attr}")
    assert "\n" not in str(info.value)


def test_unknown_module_names_the_folder_searched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SqueezeError, match="No module named 'nosuchmodule_xyz'") as info:
        get_task("nosuchmodule_xyz:make")
    assert str(tmp_path.resolve()) in str(info.value)


def test_console_script_imports_from_the_working_folder(tmp_path):
    """The console script does not put the working folder on sys.path as ``python -m`` would."""
    (tmp_path / "consoletasks.py").write_text(MODULE)
    exe = Path(sys.executable).with_name("squeezetune")
    proc = subprocess.run([str(exe), "train", "--task", "consoletasks:broken", "--out", "w.safetensors"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: task factory 'consoletasks:broken' raised RuntimeError: no data here"
    assert not (tmp_path / "w.safetensors").exists()


@pytest.mark.parametrize("name", ["transformer-digits", "lstm-digits", "conv1d-digits", "cnn32-digits"])
def test_deep_compression_codes_every_weight_of_the_new_tasks(name, tmp_path):
    """The built-in recipe's generic rule (fine-tuning left out: the coding is what is tested) on each task's model."""
    from squeezetune.compression import Recipe, compress, load_recipe

    task = get_task(name)
    model = task.build_model()
    data = load_recipe("deep-compression", task.model, model).to_dict()
    for stage in data["stages"]:
        for kind, settings in stage.items():
            if kind == "finetune":
                settings["epochs"] = 0
    report = compress(task, Recipe.from_dict(data), out=tmp_path / "m.sqz", dense=model, latency=False)
    weights = [t for t in report.tensors if len(t.shape) >= 2]
    assert weights and all(t.action != "raw" for t in weights), [(t.name, t.why) for t in weights if t.action == "raw"]
    assert report.compressed_bytes == (tmp_path / "m.sqz").stat().st_size < report.dense_bytes / 5
