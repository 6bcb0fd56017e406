"""Every mistake a user can make on the command line: one ``error:`` line, exit 2, nothing left behind.

Each row runs the CLI in a fresh, empty working folder with an empty dense-baseline cache, and checks
the guarantees of the CLI's error boundary (``squeezetune.cli.main``): exit code 2, exactly one
line starting with ``error:`` (the last one on stderr), no traceback, the expected words in it, no
file created in the working folder and no dense baseline trained. Parser errors (whatever typer or
click raises them) and the commands' own checks are covered alike; Ctrl-C (exit 130) at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from squeezetune.cli import main
from squeezetune.tasks import Split, Task
from squeezetune.tasks.models import LeNet300

NO_CUDA = not torch.cuda.is_available()

PARSER_ERRORS = [
    ([], "missing command: expected one of train, compress"),
    (["compres"], "No such command 'compres'"),
    (["train"], "Missing option '--out'"),
    (["train", "--out", "w.safetensors", "--bogus"], "No such option: --bogus"),
    (["train", "--out", "w.safetensors", "--seed", "one"], "(got 'one')"),
    (["train", "--out", "w.safetensors", "--seed", "-1"], "--seed"),
    (["compress", "--macs-target", "half"], "(got 'half')"),
    (["compress", "--out"], "requires an argument"),
    (["inspect"], "Missing argument 'container'"),
    (["inspect", "a.sqz", "b.sqz"], "unexpected extra argument"),
    (["evaluate"], "Missing argument 'container'"),
    (["decode", "m.sqz"], "Missing option '--out'"),
    (["search", "--trials", "three"], "(got 'three')"),
    (["search", "--trials", "0"], "--trials"),
    (["search", "--max-concurrent", "0"], "--max-concurrent"),
    (["search", "--gpus-per-trial", "-1"], "--gpus-per-trial"),
    (["search", "--sampler"], "requires an argument"),
    (["pareto"], "Missing option '--name'"),
    (["pareto", "--name", "s", "--all", "yes"], "unexpected extra argument"),
    (["export", "--name", "s"], "Missing option '--out'"),
    (["export", "--name", "s", "--out", "e", "--max-bytes", "30kB"], "(got '30kB')"),
    (["export", "--name", "s", "--out", "e", "--max-drop", "0.5%"], "(got '0.5%')"),
    (["export", "--name", "s", "--out", "e", "--trial", "-2"], "--trial"),
]

OWN_ERRORS = [
    (["train", "--task", "lenet9-mnist", "--out", "w.safetensors"], "unknown task 'lenet9-mnist'"),
    (["train", "--out", "w.pt"], "--out 'w.pt' must end in .safetensors"),
    (["train", "--out", "missing/w.safetensors"], "--out directory 'missing' does not exist"),
    (["train", "--out", "w.safetensors", "--device", "tpu"], "device 'tpu' is not a device name"),
    (["train", "--out", "w.safetensors", "--device", "cuda:7"], "CUDA GPU"),
    (["train", "--task", "lenet300-mnist", "--out", "w.safetensors"], "needs --data-dir"),
    (["train", "--task", "lenet300-mnist", "--data-dir", "nodata", "--out", "w.safetensors"], "data dir 'nodata' does not exist"),
    (["train", "--task", "nomodule_xyz:make", "--out", "w.safetensors"], "cannot load task factory 'nomodule_xyz:make'"),
    (["compress", "--recipe", "nope.yaml"], "recipe 'nope.yaml' is neither a built-in"),
    (["compress", "--dense", "none.safetensors"], "weights file 'none.safetensors' does not exist"),
    (["compress", "--recipe", "filter-pruning", "--allocation", "best"], "--allocation 'best'"),
    (["compress", "--out", "m.zip"], "must end in .sqz"),
    (["compress", "--device", "cuda:0" if NO_CUDA else "cuda:99"], "CUDA GPU"),
    (["inspect", "none.sqz"], "none.sqz"),
    (["inspect", "."], "'.'"),
    (["evaluate", "none.sqz"], "none.sqz"),
    (["evaluate", "none.sqz", "--device", "tpu"], "device 'tpu'"),
    (["decode", "none.sqz", "--out", "w.safetensors"], "none.sqz"),
    (["decode", "none.sqz", "--out", "w.bin"], "must end in .safetensors"),
    (["search", "--config", "none.yaml"], "config 'none.yaml' does not exist"),
    (["search", "--name", "a b"], "name='a b'"),
    (["search", "--sampler", "grid"], "sampler='grid'"),
    (["search", "--ray-address", "my cluster"], "ray_address='my cluster'"),
    (["search", "--experiment", " "], "experiment=' '"),
    (["search", "--tracking-uri", "./mlruns"], "not supported"),
    (["search", "--tracking-uri", "sqlite:///nofolder/mlflow.db"], "does not exist"),
    (["search", "--resume", "ghost"], "no MLflow store at"),
    (["search", "--resume", "ghost", "--task", "lenet5-digits"], "--task cannot be changed"),
    (["search", "--resume", "ghost", "--seed", "3"], "--seed cannot be changed"),
    (["pareto", "--name", "ghost"], "no MLflow store at"),
    (["export", "--name", "ghost", "--out", "e"], "give exactly one of --trial, --max-bytes, --max-drop"),
    (["export", "--name", "ghost", "--out", "e", "--trial", "0", "--max-drop", "1"], "give exactly one of"),
    (["export", "--name", "ghost", "--out", "e", "--max-drop", "nan"], "--max-drop nan"),
    (["export", "--name", "ghost", "--out", "e", "--max-drop", "150"], "--max-drop 150"),
    (["export", "--name", "ghost", "--out", "e", "--trial", "0", "--model-name", "my model/x"], "--model-name 'my model/x' is refused by MLflow"),
    (["export", "--name", "ghost", "--out", "e", "--trial", "0", "--alias", "latest"], "--alias 'latest' is refused by MLflow"),
    (["export", "--name", "ghost", "--out", "e", "--trial", "0", "--alias", "v2"], "--alias 'v2' is refused by MLflow"),
    (["export", "--name", "ghost", "--out", "nofolder/e", "--trial", "0"], "does not exist"),
    (["export", "--name", "ghost", "--out", "e", "--trial", "0"], "no MLflow store at"),
    (["train", "--task", "tests.test_cli_errors:datasets_task", "--out", "w.safetensors"], "returned tuple of (TensorDataset, TensorDataset): expected (train, eval), two squeezetune.tasks.Split"),
    (["compress", "--task", "tests.test_cli_errors:datasets_task"], "load_data returned tuple of (TensorDataset, TensorDataset)"),
    (["search", "--task", "tests.test_cli_errors:one_split_task"], "load_data returned Split: expected (train, eval)"),
    (["train", "--task", "tests.test_cli_errors:broken_loader_task", "--out", "w.safetensors"], "task 'broken': load_data raised ValueError: no column 'label' in train.csv (SQUEEZETUNE_DEBUG=1"),
    (["compress", "--task", "tests.test_cli_errors:float64_task"], "task 'float64': the train split's inputs are float64: expected float32"),
    (["compress", "--task", "tests.test_cli_errors:float_label_task"], "the train split's labels are torch.float32: expected integer class indices"),
    (["compress", "--task", "tests.test_cli_errors:one_hot_task"], "the train split's labels have shape (8, 10): expected one class index per example"),
    (["compress", "--task", "tests.test_cli_errors:short_labels_task"], "the train split's x holds 8 examples and y 6 labels: expected as many of each"),
    (["train", "--task", "tests.test_cli_errors:label_range_task", "--out", "w.safetensors"], "the train split has label 12 but the model scores 10 classes: expected labels in [0, 10)"),
    (["compress", "--task", "tests.test_cli_errors:tuple_output_task"], "the model's forward returns tuple of (Tensor, Tensor): expected one tensor of class scores"),
    (["compress", "--task", "tests.test_cli_errors:eval_shape_task"], "the model fails on the eval inputs (RuntimeError: "),
    (["train", "--task", "tests.test_cli_errors:eval_shape_task", "--out", "w.safetensors"], "the model fails on the eval inputs (RuntimeError: "),
    (["compress", "--task", "tests.test_cli_errors:sequence_output_task"], "the model returns shape (2, 4, 10) for 2 examples: expected class scores of shape (2, classes)"),
    (["compress", "--task", "tests.test_cli_errors:eval_label_range_task"], "the eval split has label 10 but the model scores 10 classes"),
    (["compress", "--task", "tests.test_cli_errors:float64_task", "--recipe", "data-free-merge"], "the train split's inputs are float64"),
]


def _datasets(_):
    x, y = torch.zeros(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)
    return TensorDataset(x, y), TensorDataset(x, y)


def datasets_task() -> Task:
    """A user's task whose loader returns torch datasets instead of squeezetune Splits."""
    return Task(name="datasets", model="mine", build_model=LeNet300, load_data=_datasets)


def one_split_task() -> Task:
    return Task(name="one-split", model="mine", build_model=LeNet300, load_data=lambda _: Split(torch.zeros(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)))


def _broken(_):
    raise ValueError("no column 'label' in train.csv")


def broken_loader_task() -> Task:
    return Task(name="broken", model="mine", build_model=LeNet300, load_data=_broken)


def _task(name: str, train: Split, held: Split | None = None, build=LeNet300) -> Task:
    return Task(name=name, model="mine", build_model=build, load_data=lambda _: (train, held if held is not None else train))


def float64_task() -> Task:
    return _task("float64", Split(torch.zeros(8, 1, 28, 28, dtype=torch.float64), torch.zeros(8, dtype=torch.long)))


def float_label_task() -> Task:
    return _task("float-labels", Split(torch.zeros(8, 1, 28, 28), torch.zeros(8)))


def one_hot_task() -> Task:
    return _task("one-hot", Split(torch.zeros(8, 1, 28, 28), torch.zeros(8, 10, dtype=torch.long)))


def short_labels_task() -> Task:
    return _task("short", Split(torch.zeros(8, 1, 28, 28), torch.zeros(6, dtype=torch.long)))


def label_range_task() -> Task:
    return _task("range", Split(torch.zeros(8, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 5, 6, 12])))


class _TwoHeads(LeNet300):
    def forward(self, x):
        out = super().forward(x)
        return out, out


def tuple_output_task() -> Task:
    return _task("tuple", Split(torch.zeros(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)), build=_TwoHeads)


class _PerStep(LeNet300):
    def forward(self, x):
        return super().forward(x).unsqueeze(1).expand(-1, 4, -1)


def sequence_output_task() -> Task:
    return _task("per-step", Split(torch.zeros(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)), build=_PerStep)


def eval_label_range_task() -> Task:
    return _task("eval-range", Split(torch.zeros(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)), Split(torch.zeros(8, 1, 28, 28), torch.full((8,), 10)))


def eval_shape_task() -> Task:
    return _task("eval-shape", Split(torch.zeros(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)), Split(torch.zeros(8, 1, 14, 14), torch.zeros(8, dtype=torch.long)))


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("SQUEEZETUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return work


def _one_error_line(capsys, args) -> str:
    code = main(args)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    return lines[-1]


@pytest.mark.parametrize("args, message", PARSER_ERRORS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_parser_errors(empty_cwd, capsys, args, message):
    before = _tree(empty_cwd)
    line = _one_error_line(capsys, args)
    assert message in line
    assert "--help" in line  # says where the usage is
    assert _tree(empty_cwd) == before


@pytest.mark.parametrize("args, message", OWN_ERRORS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_own_errors(empty_cwd, capsys, args, message):
    (empty_cwd / "e").mkdir() if args[:1] == ["export"] and "nofolder/e" not in args else None
    before = _tree(empty_cwd)
    line = _one_error_line(capsys, args)
    assert message in line
    assert _tree(empty_cwd) == before  # no output, no mlflow.db, no half-written file
    assert not (empty_cwd.parent / "cache").exists()  # refused before any dense training


def test_debug_shows_where_a_users_loader_failed(empty_cwd, capsys, monkeypatch):
    monkeypatch.setenv("SQUEEZETUNE_DEBUG", "1")
    code = main(["train", "--task", "tests.test_cli_errors:broken_loader_task", "--out", "w.safetensors"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "in _broken" in err
    assert err.strip().splitlines()[-1].startswith("error: task 'broken': load_data raised ValueError")


def test_bare_command_prints_the_help_too(empty_cwd, capsys):
    assert main([]) == 2
    out, _ = capsys.readouterr()
    assert "compress" in out and "search" in out


def test_export_refuses_a_folder_that_is_not_empty(empty_cwd, capsys):
    (empty_cwd / "e").mkdir()
    (empty_cwd / "e" / "keep.txt").write_text("mine")
    line = _one_error_line(capsys, ["export", "--name", "ghost", "--out", "e", "--trial", "0"])
    assert "is a folder that is not empty" in line and "--force" in line
    assert (empty_cwd / "e" / "keep.txt").read_text() == "mine"


def test_help_exits_0(capsys):
    assert main(["export", "--help"]) == 0
    assert "--force" in capsys.readouterr().out


def test_an_unwritable_out_folder_is_refused_before_any_work(empty_cwd, capsys):
    if os.geteuid() == 0:
        target = "/proc/w.safetensors"  # not even root can create files there
    else:
        (empty_cwd / "ro").mkdir(mode=0o500)
        target = "ro/w.safetensors"
    line = _one_error_line(capsys, ["train", "--out", target])
    assert "cannot take a new file" in line
    assert not (empty_cwd.parent / "cache").exists()


def test_console_script_turns_parser_errors_into_one_line(tmp_path):
    exe = Path(sys.executable).with_name("squeezetune")
    for args in (["compres"], ["search", "--trials", "three"]):
        proc = subprocess.run([str(exe), *args], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr


def _interrupt(args: list[str], wait_for: str, tmp_path: Path, cache: Path) -> tuple[int, str]:
    """Run the CLI in a child, send it SIGINT (Ctrl-C) once ``wait_for`` appears on its stderr."""
    env = {**os.environ, "SQUEEZETUNE_CACHE": str(cache)}
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        # preexec: a child of a non-interactive shell may inherit SIGINT ignored; a terminal's is not
        proc = subprocess.Popen(
            [sys.executable, "-m", "squeezetune.cli", *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
        )
        deadline = time.monotonic() + 300
        while wait_for not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, log.read_text()[-2000:]
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    return code, log.read_text()


@pytest.mark.slow
def test_ctrl_c_in_train_exits_130_and_writes_nothing(tmp_path):
    code, err = _interrupt(["train", "--out", "w.safetensors"], "dense epoch 2/", tmp_path, tmp_path / "cache")
    assert code == 130 and err.strip().splitlines()[-1] == "interrupted"
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".*tmp"))


@pytest.mark.slow
def test_ctrl_c_in_compress_finetune_stops_the_pipeline(tmp_path):
    """Ctrl-C in the fine-tune stage ends the whole command: no later stage, no container, exit 130."""
    from squeezetune.compression.baseline import save_weights
    from squeezetune.tasks import get_task

    save_weights(get_task("lenet300-digits").build_model(), tmp_path / "dense.safetensors")
    (tmp_path / "long.yaml").write_text("prune: {default: {keep_fraction: 0.1}}\nfinetune: {epochs: 50, lr: 1e-3}\nshare: {default: {bits: 4}}\n")
    code, err = _interrupt(["compress", "--recipe", "long.yaml", "--dense", "dense.safetensors", "--out", "m.sqz"], "finetune epoch 2/", tmp_path, tmp_path / "cache")
    assert code == 130 and err.strip().splitlines()[-1] == "interrupted"
    assert "share " not in err and "encode" not in err
    assert not (tmp_path / "m.sqz").exists() and not (tmp_path / "m.report.json").exists()
