"""The README's code blocks run as a new user would run them, adapted only to fast built-in tasks.

The blocks are read from README.md when the tests run, so a changed README is tested as it is:

* every line of a ```bash block (``\\`` continuations joined, split at ``&&``) that starts with
  ``squeezetune`` or ``.venv/bin/squeezetune`` runs through the CLI, in README order, in one working
  folder; it must exit 0;
* a line that starts with one of :data:`SKIP` is not run, for the reason written there (the skipped
  lines show as SKIPPED with that reason); any other line fails :func:`test_every_bash_line_is_run_or_skipped`;
* every ```yaml block is read with the project's loader and checked as what its content is: a search
  config (it has a key only configs have), else a recipe (``Recipe.from_dict`` takes it), else a
  search space; recipes are checked against the first built-in model that has their layers;
* ``<!-- file: NAME -->`` on the line before a block writes the (adapted) block to ``NAME`` in the
  working folder, for the commands that use it.

Adaptations (:func:`adapt_command`, :func:`adapt_yaml`): every built-in task becomes
``lenet300-digits`` (no ``--data-dir``), or for recipes the smallest digits task with their layers;
a new search runs at most 2 trials with 1-epoch fine-tunes, a resumed one at most 3; every
``epochs`` (and a fidelity's ``centroid_epochs``, ``min_epochs``) in a YAML block is at most 1; GPUs are not asked for on a machine without CUDA.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from squeezetune._yaml import loads

README = Path(__file__).resolve().parent.parent / "README.md"
FAST_TASK = "lenet300-digits"
RECIPE_TASKS = ["lenet300-digits", "lenet5-digits", "resnet20-digits", "vgg-digits", "mobilenetv2-digits"]
NEW_SEARCH_TRIALS, RESUMED_SEARCH_TRIALS, MAX_EPOCHS = 2, 3, 1
EPOCH_KEYS = ("epochs", "centroid_epochs", "min_epochs")
FAST_SEARCH = {"max_concurrent": 2, "fidelity": {"epochs": 1, "centroid_epochs": 1, "min_epochs": 1}}

SETUP = "sets up the environment the suite already runs in"
CLUSTER = "needs a real Ray cluster on AWS"
SKIP: dict[tuple[str, ...], str] = {
    ("python3", "-m", "venv"): SETUP,
    (".venv/bin/pip", "install"): SETUP,
    (".venv/bin/pytest",): "is the test suite itself",
    (".venv/bin/mlflow", "ui"): "starts a web server that runs until stopped",
    ("ray", "get-auth-token"): CLUSTER,
    ("export", "RAY_AUTH_MODE=token"): CLUSTER,
    ("ray", "up"): CLUSTER,
    ("ray", "dashboard"): CLUSTER,
    ("ray", "job", "submit"): CLUSTER,
    ("ray", "attach"): CLUSTER,
}
_BLOCK = re.compile(r"(?:<!--\s*file:\s*(?P<file>\S+)\s*-->\s*\n)?^```(?P<lang>\w*)\n(?P<body>.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int
    file: str | None


def blocks(lang: str) -> list[Block]:
    text = README.read_text(encoding="utf-8")
    return [Block(m["lang"], m["body"], text.count("\n", 0, m.start("body")) + 1, m["file"]) for m in _BLOCK.finditer(text) if m["lang"] == lang]


def bash_commands() -> list[tuple[int, list[str]]]:
    """``(README line, argv)`` of every command in the bash blocks, in order."""
    out = []
    for block in blocks("bash"):
        pending, start = "", 0
        for i, line in enumerate(block.body.splitlines()):
            start = start if pending else block.line + i
            pending += line[:-1] + " " if line.endswith("\\") else line
            if line.endswith("\\"):
                continue
            tokens, pending = shlex.split(pending, comments=True), ""
            while tokens:
                cut = tokens.index("&&") if "&&" in tokens else len(tokens)
                out.append((start, tokens[:cut]))
                tokens = tokens[cut + 1 :]
    return out


def skip_reason(argv: list[str]) -> str | None:
    for prefix, reason in SKIP.items():
        if tuple(argv[: len(prefix)]) == prefix:
            return reason
    return None


def is_squeezetune(argv: list[str]) -> bool:
    return bool(argv) and (argv[0] == "squeezetune" or argv[0].endswith("/squeezetune"))


def _builtin(task: str) -> bool:
    from squeezetune.tasks import builtin_task_names

    return task in builtin_task_names()


def _without(args: list[str], *flags: str) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not any(a.startswith(f + "=") for f in flags):
            out.append(a)
    return out


def _set(args: list[str], flag: str, value: str) -> list[str]:
    return [*_without(args, flag), flag, value]


def _value(args: list[str], *flags: str) -> str | None:
    for i, a in enumerate(args[:-1]):
        if a in flags:
            return args[i + 1]
    return None


def adapt_command(args: list[str], workdir: Path) -> list[str]:
    """A README command (without the program name) made fast, as the module docstring says."""
    task = _value(args, "--task", "-t")
    if task is not None and _builtin(task):
        args = _set(_without(args, "--task", "-t"), "--task", FAST_TASK)
    args = _without(args, "--data-dir", "-d")
    if not torch.cuda.is_available():
        args = _without(args, "--gpus-per-trial")
    if args[:1] == ["search"]:
        resumed = _value(args, "--resume") is not None
        cap = RESUMED_SEARCH_TRIALS if resumed else NEW_SEARCH_TRIALS
        trials = _value(args, "--trials")
        if trials is not None or not resumed:
            args = _set(args, "--trials", str(min(int(trials or cap), cap)))
        if not resumed and _value(args, "--config", "-c") is None:
            (workdir / "readme-fast.yaml").write_text(yaml.safe_dump(FAST_SEARCH))
            args = [*args, "--config", "readme-fast.yaml"]
    return args


def _cap_epochs(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: (_cap_number(v) if k in EPOCH_KEYS else _cap_epochs(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [_cap_epochs(v) for v in data]
    return data


def _cap_number(v: Any) -> Any:
    if isinstance(v, list):
        return [_cap_number(x) for x in v]
    return min(v, MAX_EPOCHS) if isinstance(v, int) and not isinstance(v, bool) else v


def kind_of(data: dict) -> str:
    """``config``, ``recipe`` or ``space``: what a README YAML block is, by its content."""
    from squeezetune.compression.recipes import Recipe
    from squeezetune.errors import SqueezeError
    from squeezetune.search.config import SearchConfig

    if set(data) & ({f.name for f in fields(SearchConfig)} - {f.name for f in fields(Recipe)}):
        return "config"
    try:
        Recipe.from_dict(data)
        return "recipe"
    except SqueezeError:
        return "space"


def adapt_yaml(data: dict) -> dict:
    data = _cap_epochs(data)
    if kind_of(data) == "config":
        if _builtin(str(data.get("task", FAST_TASK))):
            data = {**{k: v for k, v in data.items() if k != "data_dir"}, "task": FAST_TASK}
        data["trials"] = min(int(data.get("trials", NEW_SEARCH_TRIALS)), NEW_SEARCH_TRIALS)
        data["max_concurrent"] = min(int(data.get("max_concurrent") or 2), 2)
        if not torch.cuda.is_available() and isinstance(data.get("resources"), dict):
            data["resources"] = {**data["resources"], "gpus": 0}
    return data


def recipe_task(data: dict):
    """The first of :data:`RECIPE_TASKS` whose model the recipe fits, and the recipe."""
    from squeezetune.compression.recipes import Recipe
    from squeezetune.errors import SqueezeError
    from squeezetune.tasks import get_task

    recipe = Recipe.from_dict(data)
    errors = []
    for name in RECIPE_TASKS:
        task = get_task(name)
        try:
            recipe.validate(task.build_model(), torch.zeros(1, 1, 28, 28))
            return task, recipe
        except SqueezeError as exc:
            errors.append(f"{name}: {exc}")
    pytest.fail(f"the recipe fits no built-in model: {errors}")


def _check_yaml(block: Block) -> str:
    from squeezetune.search.config import SearchConfig
    from squeezetune.spaces import derive_space
    from squeezetune.tasks import get_task

    data = loads(block.body)
    assert isinstance(data, dict), f"README line {block.line}: a YAML block must hold a mapping"
    kind = kind_of(data)
    if kind == "config":
        from squeezetune.search.runner import space_config

        config = SearchConfig.from_dict(adapt_yaml(data))
        derive_space(get_task(config.task).build_model(), space_config(config), sensitivity={})
    elif kind == "recipe":
        recipe_task(data)
    else:
        derive_space(get_task(FAST_TASK).build_model(), data)
    return kind


YAML_BLOCKS = blocks("yaml")
SKIPPED = [(line, argv) for line, argv in bash_commands() if skip_reason(argv)]


def test_the_readme_has_commands_and_yaml_to_test():
    assert YAML_BLOCKS and [argv for _, argv in bash_commands() if is_squeezetune(argv)]


def test_every_bash_line_is_run_or_skipped():
    unknown = [(line, " ".join(argv)) for line, argv in bash_commands() if not is_squeezetune(argv) and not skip_reason(argv)]
    assert not unknown, f"README bash lines that are neither squeezetune commands nor in SKIP: {unknown}"


@pytest.mark.parametrize("line, argv", SKIPPED, ids=[f"line{line}" for line, _ in SKIPPED])
def test_skipped_lines(line, argv):
    pytest.skip(f"README line {line} ({' '.join(argv[:3])} ...) {skip_reason(argv)}")


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[f"line{b.line}" for b in YAML_BLOCKS])
def test_yaml_block_is_a_valid_recipe_config_or_space(block):
    assert _check_yaml(block) in ("config", "recipe", "space")


def _run(args: list[str], capsys) -> None:
    from squeezetune.cli import main

    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, f"squeezetune {' '.join(args)} exited {code}:\n{err[-3000:]}\n{out[-2000:]}"


@pytest.mark.slow
def test_readme_commands_run_in_order(tmp_path, monkeypatch, cache_dir, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for block in (b for b in blocks("yaml") if b.file):
        (tmp_path / block.file).write_text(yaml.safe_dump(adapt_yaml(loads(block.body))))
    ran = []
    for line, argv in bash_commands():
        if is_squeezetune(argv):
            args = adapt_command(argv[1:], tmp_path)
            _run(args, capsys)
            ran.append(line)
    assert ran


@pytest.mark.slow
@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[f"line{b.line}" for b in YAML_BLOCKS])
def test_yaml_block_runs(block, tmp_path, monkeypatch, cache_dir, capsys):
    """A recipe compresses its model (an untrained one, on a slice of the digits: the recipe is what is
    tested); a config not already run by a README command runs its search; a space is checked above."""
    from squeezetune.compression.pipeline import compress

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    data = adapt_yaml(loads(block.body))
    kind = kind_of(data)
    if kind == "recipe":
        task, recipe = recipe_task(data)
        train, held = task.load_data(None)
        splits = (type(train)(train.x[:256], train.y[:256]), type(held)(held.x[:128], held.y[:128]))
        report = compress(task, recipe, out=tmp_path / "m.sqz", dense=task.build_model(), splits=splits)
        assert (tmp_path / "m.sqz").stat().st_size == report.compressed_bytes
    elif kind == "config" and not block.file:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
        _run(["search", "--config", "c.yaml"], capsys)


def _section(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start : end if end > 0 else len(text)]


def test_every_flag_of_every_command_is_documented():
    import typer

    from squeezetune.cli import _register_optional, app

    _register_optional()
    missing = []
    for name, command in typer.main.get_command(app).commands.items():
        section = _section(f"### squeezetune {name}\n")
        for param in command.params:
            for opt in (o for o in param.opts if o.startswith("--")):
                if f"`{opt}`" not in section:
                    missing.append(f"{name} {opt}")
    assert not missing, f"flags missing from README's Reference: {missing}"


def test_every_search_config_key_and_output_file_is_documented():
    from squeezetune.search.config import SearchConfig

    keys = _section("### Search config keys\n")
    assert not [f.name for f in fields(SearchConfig) if f"| `{f.name}` |" not in keys]
    files = _section("### Files\n")
    for name in ("optuna.db", "mlflow.db", "export.json", "recipe.yaml", "model.report.json", "search_config.json", "model.pt2", "model.onnx"):
        assert name in files, name
    assert "percentage points" in README.read_text(encoding="utf-8")  # the unit of max_drop / --max-drop
