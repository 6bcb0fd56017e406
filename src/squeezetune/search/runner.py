"""Running a search: validate, share the dense baseline, run Ray Tune + Optuna, keep MLflow current.

:func:`run_search` is what ``squeezetune search`` calls. Everything that can be checked is checked
before the first trial: the space against the model (unknown knobs or layers, empty ranges), the
constraints against the space (a ``max_bytes`` below the space's most compressed configuration,
measured), the tracking store (probed with a short timeout).

Resume. The Optuna study, kept in an RDB storage beside ``mlflow.db``, is the record of a search:
``--resume NAME`` reloads it, settles the trials the dead driver left RUNNING (a trial whose MLflow
run had finished is told its outcome; any other is marked interrupted and re-queued with the same
parameters and the same MLflow run), then runs only the trials still missing. Tune's own experiment
restore is not used.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from squeezetune.compression.report import OUTCOME
from squeezetune.errors import SqueezeError
from squeezetune.search import tracking
from squeezetune.search.config import AUTO_MINUTES, SearchConfig, default_max_concurrent
from squeezetune.search.pareto import Baseline, Point
from squeezetune.search.status import SearchStatus
from squeezetune.spaces import Constraints, Space, derive_space
from squeezetune.spaces.space import clip, needs_sensitivity

if TYPE_CHECKING:
    from squeezetune.search.searcher import OutcomeConstraints

Progress = Callable[[str], None]
EARLY_STOPPING_TAG = "squeezetune.early_stopping"
"""The parent run's tag saying what ``early_stopping: auto`` measured and did."""


def _quiet(_: str) -> None:
    pass


@dataclass
class SearchOutcome:
    """What a search ended with (also what the CLI prints)."""

    name: str
    tracking_uri: str
    parent_run_id: str
    experiment_id: str
    trials: int
    counts: dict[str, int]
    points: list[Point]
    front: list[Point]
    baseline: Baseline
    seconds: float
    finished: bool
    study_storage: str
    nodes: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    """The distinct error messages of the failed trials, first seen first."""
    out_of_time: bool = False
    """The time budget ended the search before ``trials`` were done (it counts as finished)."""


def default_study_storage(uri: str) -> str:
    db = tracking.sqlite_path(uri)
    folder = db.parent if db is not None else Path.cwd().resolve()
    return f"sqlite:///{folder / 'optuna.db'}"


def load_saved_config(uri: str, experiment: str, name: str) -> SearchConfig:
    """The config a search was started with, read back from its parent run."""
    import json

    c, _, parent = tracking.find_search(uri, experiment, name)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = c.download_artifacts(parent.info.run_id, tracking.CONFIG_ARTIFACT, tmp)
        except Exception as exc:
            raise SqueezeError(f"search {name!r} has no {tracking.CONFIG_ARTIFACT} artifact to resume from ({type(exc).__name__})") from None
        data = json.loads(Path(path).read_text())
    data["tracking_uri"] = uri
    return SearchConfig.from_dict(data)


def warm_start_params(space: Space, task, recipes: tuple[str, ...], example=None) -> list[dict[str, Any]]:
    """The searched knobs' values of each warm-start recipe, projected into ``space``.

    ``auto`` stands for every built-in recipe whose stages the space searches (the structured
    built-ins only when the space has ``structured``). With ``example`` (the model's input), a named
    recipe is first checked against the model, as ``compress`` checks it: a layer it names that the
    model lacks is a one-line error, not a warm start at the space's corner.
    """
    from squeezetune.compression import BUILTIN_RECIPES, load_recipe

    model = task.build_model()
    out = []
    for spec in recipes:
        names = [n for n in BUILTIN_RECIPES if spec == "auto"] or [spec]
        for name in names:
            recipe = load_recipe(name, task.model, model)
            if spec == "auto" and not {step.label for step in recipe.steps} <= set(space.stages):
                continue
            if spec != "auto" and example is not None:
                try:
                    recipe.validate(model, example)
                except SqueezeError as exc:
                    raise SqueezeError(f"warm_start {name!r}: {exc}") from None
            params = space.project(recipe)
            out.append({k.name: params[k.name] for k in space.searched})
    return out


NEIGHBOUR_STEPS = ((0.85, 0, 1.0), (1.0, -1, 1.0), (1.3, 0, 1.0), (1.0, 0, 1.5))
"""The steps from a warm start to its neighbours: (factor on every kept weight count or fraction,
bits added to the largest tensor's sharing, factor on the largest tensor's kept weights alone)."""


def neighbours(space: Space, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The configurations one step around ``params`` (a warm start) in ``space``, up to four: every
    tensor keeps 15% fewer weights; the largest share knob's weights (its tensor, or the tensors of a
    grouped knob that have none of their own) get one bit less (half the clusters); every tensor
    keeps 30% more weights; the largest keep knob's weights alone (its tensor, or a group's) keep 50%
    more, a step left out when that knob is fixed or is a global budget. Every other setting
    stays the warm start's. Kept fractions are clipped into their ranges, so a tensor at a range's
    end moves less than the others; a step that moves nothing, or only a fixed knob, is left out.

    A built-in recipe sits near the knee of the accuracy/bytes front on the MNIST nets
    (BENCHMARKS.md, section ``search``): its smaller neighbours are where a search beats it, and its
    larger ones are what remains when the recipe itself misses an accuracy limit on a seed. The
    largest tensor is the one a recipe prunes hardest: on LeNet-300-100, fc1 alone at 2.4% instead of
    1.6% kept the recipe within 0.1 pt on a seed where it and its 30%-larger neighbour lost half a
    point. That step was chosen on that seed; on five other seeds it won none (section ``search``).
    """
    every_keep = [k for k in space.knobs if k.target[0] in ("prune", "gradual_prune") and k.target[-1] in ("keep", "keep_fraction")]
    keeps = [k for k in every_keep if k.searched]
    shares = [k for k in space.knobs if k.target[:2] == ("share", "layers") and k.target[-1] in ("bits", "clusters")]

    def weights(knob, of) -> int:
        """The weights ``knob`` sets: its tensor's, or those of its group (of every tensor, for a
        budget) that have no knob of their own among ``of`` in the same stage."""
        own = {k.target[2] for k in of if k.target[0] == knob.target[0] and k.target[2] in space.layers}
        unit = knob.target[2]
        if unit in space.layers:
            return space.layers[unit]
        return sum(space.layers[m] for m in space.groups.get(unit, tuple(space.layers)) if m not in own)

    largest = max(shares, key=lambda k: weights(k, shares), default=None)
    heaviest = max(every_keep, key=lambda k: weights(k, every_keep), default=None)
    if heaviest is not None and (not heaviest.searched or heaviest.target[1] == "budget"):
        heaviest = None  # a fixed largest tensor takes no step, and a budget spans every tensor
    out: list[dict[str, Any]] = []
    for factor, bits, alone in NEIGHBOUR_STEPS:
        step = {**params, **{k.name: clip(params[k.name] * factor * (alone if k is heaviest else 1.0), k) for k in keeps}}
        if bits and largest is not None and largest.searched:
            value = params[largest.name]
            step[largest.name] = clip(value + bits if largest.target[-1] == "bits" else value * 2.0**bits, largest)
        if step != params and step not in out:
            out.append(step)
    return out


def check_constraints(space: Space, constraints: Constraints, *, task, dense, splits, dense_macs: int | None, seed: int, example=None, progress: Progress = _quiet) -> int | None:
    """Fail before any trial if no configuration of ``space`` can meet ``constraints``.

    ``max_bytes`` is compared with the container of the space's most compressed corner (fewest kept
    weights and clusters, each allowed coder and the ends of the index-bits range, no fine-tuning),
    measured by running the pipeline on it. ``max_macs`` is compared with the dense model's MACs
    when the space has no structured (channel) pruning. ``max_latency_ms`` (a CPU figure, given
    ``example``) gets a note with the dense model's latency on this machine, whose trials may not
    be the search's (:func:`latency_note`). Returns the smallest bytes measured.
    """
    smallest = None
    if constraints.max_bytes is not None:
        from squeezetune.compression import compress

        overrides: dict[str, Any] = {k.name: 0 for k in space.knobs if k.name.endswith(".epochs")}
        coder = space.knob("encode.coder")
        coders = coder.domain.choices if hasattr(coder.domain, "choices") else (coder.corners()[0],)
        bits = sorted(set(space.knob("encode.index_bits").corners()))
        with tempfile.TemporaryDirectory(prefix="squeezetune-probe-") as tmp:
            for cd in coders:
                for b in bits:
                    params = space.corner(**overrides, **{"encode.coder": cd, "encode.index_bits": b})
                    report = compress(task, space.recipe(params, name="probe"), out=Path(tmp) / "probe.sqz", dense=dense, splits=splits, seed=seed, latency=False)
                    smallest = report.compressed_bytes if smallest is None else min(smallest, report.compressed_bytes)
        progress(f"most compressed corner of the space: {smallest:,} bytes")
        if smallest > constraints.max_bytes:
            raise SqueezeError(f"constraints.max_bytes={constraints.max_bytes:,} cannot be met: the most compressed configuration of this space takes {smallest:,} bytes")
    from squeezetune.compression.stages import stage_config
    from squeezetune.spaces.space import SPACE_STAGES

    kinds = {st.key: st.stage for st in SPACE_STAGES}
    reshapes = any(stage_config(kinds[s]).changes_architecture for s in space.stages)
    if constraints.max_macs is not None and not reshapes:
        if dense_macs is not None and dense_macs > constraints.max_macs:
            raise SqueezeError(
                f"constraints.max_macs={constraints.max_macs:,} cannot be met: with no stage in the space that changes the architecture "
                f"(structured, decompose, strided, merge, neurons) every trial keeps the dense model's {dense_macs:,} MACs"
            )
    if constraints.max_latency_ms is not None and not constraints.latency.endswith("_gpu") and example is not None:
        from squeezetune.compression.latency import LatencyConfig, time_in_rounds

        batch = int(constraints.latency.removeprefix("latency_ms_b"))  # as a trial times it: one thread, in rounds
        timed = time_in_rounds({"dense": dense}, batch=batch, device="cpu", example=example, config=LatencyConfig())
        progress(latency_note(timed.median("dense"), constraints, reshapes=reshapes))
    return smallest


def latency_note(dense_ms: float, constraints: Constraints, *, reshapes: bool) -> str:
    """What ``constraints.max_latency_ms`` asks of the trials, given the dense model's latency here.

    >>> latency_note(2.0, Constraints(max_latency_ms=0.5), reshapes=True)
    'note: constraints.max_latency_ms=0.5 by latency_ms_b1: the dense model takes 2 ms on this machine: the trials must run 4x faster'
    """
    limit, figure = constraints.max_latency_ms, constraints.latency
    head = f"constraints.max_latency_ms={limit:g} by {figure}: the dense model takes {dense_ms:.4g} ms on this machine"
    if dense_ms <= limit:
        return f"note: {head}, within the limit, so it rules out only trials slower than the model they compress"
    if not reshapes:
        return (
            f"note: {head}, and no stage in the space changes the architecture (structured, decompose, strided, merge, neurons), "
            "so every trial runs about as fast: expect none to meet it unless the trials run on a faster machine"
        )
    return f"note: {head}: the trials must run {dense_ms / limit:.3g}x faster"


def run_search(config: SearchConfig, *, resume: bool = False, progress: Progress = _quiet) -> SearchOutcome:
    """Run (or, with ``resume``, continue) the search ``config.name`` to ``config.trials`` finished trials.

    Everything that can fail on bad input fails before the search's MLflow parent run exists, so a
    refused search leaves its name free: the config, the space, the data, the constraints, the Ray
    cluster (``ray_address``) and whether it offers the GPUs a trial asks for.
    """
    started = time.perf_counter()
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # a failed trial reports its error, not the objectives
    uri = tracking.resolve_tracking_uri(config.tracking_uri)
    tracking.probe(uri)

    from squeezetune.compression import dense_bytes as count_dense_bytes
    from squeezetune.compression import dense_model, evaluate
    from squeezetune.compression.baseline import chance_note
    from squeezetune.compression.measure import macs
    from squeezetune.tasks import example_input, get_task, hold_out

    task = get_task(config.task)
    train, held = task.splits(config.data_dir or None)
    fit, val = hold_out(train, config.validation)
    splits = (fit, held)
    example = example_input(task, fit)
    space = derive_space(task.build_model(), space_config(config), example, sensitivity={})  # a bad space fails before any training
    warm_start_params(space, task, config.warm_start, example)  # and so does a bad warm-start recipe
    progress(f"search {config.name!r}: {len(space.searched)} knobs searched, {len(space.knobs) - len(space.searched)} fixed, {config.trials} trials, sampler {config.sampler.value}")

    c = tracking.client(uri)
    exp_id = tracking.experiment_id(c, config.experiment, uri)
    parent = tracking.find_parent(c, exp_id, config.name)
    if resume and parent is None:
        raise SqueezeError(f"no search named {config.name!r} to resume in {uri}: expected one of {tracking.list_searches(c, exp_id)}")
    if not resume and parent is not None:
        raise SqueezeError(f"a search named {config.name!r} already exists in {uri}: continue it with --resume {config.name} or pick another --name")
    storage = config.study_storage or default_study_storage(uri)
    config = config.replace(study_storage=storage, tracking_uri=uri)
    prior_trials = _check_resumable(storage, config) if resume else 0

    dense = dense_model(task, splits, dense=config.dense, seed=config.seed, progress=progress)
    dense_accuracy, dense_val = evaluate(dense, held), evaluate(dense, val)
    sensitivity = None
    if needs_sensitivity(config.space):
        from squeezetune.compression.unstructured.sensitivity import sensitivity_curves

        progress("sensitivity of each tensor to pruning, on the validation split (once, for the budget allocation)")
        sensitivity = sensitivity_curves(dense, lambda m: dense_val - evaluate(m, val), calibration=fit.x, progress=progress)
    space = derive_space(task.build_model(), space_config(config), example, sensitivity=sensitivity)
    warm_starts = warm_start_params(space, task, config.warm_start)
    if config.warm_start_neighbours and warm_starts:
        recipes = len(warm_starts)
        for start in warm_starts[:recipes]:
            warm_starts += [n for n in neighbours(space, start) if n not in warm_starts]
        near = len(warm_starts) - recipes
        progress(f"warm starts: {recipes} recipe{'s' * (recipes > 1)} and {near} neighbour{'s' * (near != 1)}, run first and never stopped early")
    d_bytes = count_dense_bytes(dense)
    progress(
        f"dense baseline (trained on {len(fit):,} of the {len(train):,} training items; {len(val):,} held out to select on): "
        f"accuracy {dense_accuracy:.4f} on the {len(held):,} evaluation items, {dense_val:.4f} on validation, {d_bytes:,} bytes"
    )
    note = chance_note(dense_accuracy, held)
    if note:
        progress(note)
    check_constraints(space, config.constraints, task=task, dense=dense, splits=splits, dense_macs=macs(dense, example), seed=config.seed, example=example, progress=progress)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    owns_ray = connect_ray(config, progress)
    if config.fidelity is not None:
        f = config.fidelity
        stage = fidelity_stage(config.space)
        if stage is None:
            progress("fidelity: the space has neither finetune nor gradual_prune, so trials report no rung and each runs its stages' own schedule in full")
        else:
            rungs = ", ".join(map(str, f.rungs)) or "no rung"
            what = "fine-tune" if stage == "finetune" else "gradual pruning (each rung measures the model pruned at once to its final targets)"
            plan = f"MO-ASHA compares trials at epochs {rungs} of {f.epochs} of {what}" if f.early_stopping and f.rungs else f"every trial trains {f.epochs} epochs in {stage}"
            if f.early_stopping == "auto" and f.rungs:
                budget = f"what is left of the {config.time_budget:g}-min time budget" if config.time_budget is not None else f"{AUTO_MINUTES} min"
                plan += f"; early_stopping auto: it stops none while the full schedules of all trials, timed on those finished so far, fit in {budget}"
            progress(f"fidelity: {plan} (+{f.centroid_epochs} centroid epochs for trials that reach the end)")
    if config.time_budget is not None:
        progress(f"time budget: no trial starts later than {config.time_budget:g} min after the search began; those running then finish")
    try:
        if parent is None:
            _refuse_existing_study(storage, config.name)
            parent = _create_parent(c, exp_id, config, space, {"dense_accuracy": dense_accuracy, "dense_val_accuracy": dense_val, "dense_bytes": d_bytes})
        base = _Baseline(task, space, dense, (fit, val, held), dense_accuracy, dense_val, d_bytes, warm_starts)
        local = owns_ray and not _cluster_address(config)
        try:
            return _search(config, c, exp_id, parent, base, resume=resume, prior_trials=prior_trials, local=local, started=started, progress=progress)
        except BaseException:  # Ctrl-C or a crash after the parent run exists: the search can be continued
            where = f" --tracking-uri {uri}" if uri != tracking.default_tracking_uri() else ""
            progress(f"search {config.name!r} stopped early; continue it with: squeezetune search --resume {config.name}{where}")
            raise
    finally:
        if owns_ray:
            import ray

            ray.shutdown()


@dataclass(frozen=True)
class _Baseline:
    """What a search prepares before its parent run exists: the task, its space, the dense model."""

    task: Any
    space: Space
    dense: Any
    splits: tuple
    """``(fit, validation, evaluation)``: trials train on the first, are selected on the second and
    reported on the third."""
    accuracy: float
    val_accuracy: float
    bytes: int
    warm_starts: list[dict[str, Any]]


def _search(config: SearchConfig, c, exp_id: str, parent, base: _Baseline, *, resume: bool, prior_trials: int, local: bool, started: float, progress: Progress) -> SearchOutcome:
    """The part of :func:`run_search` that runs once the parent run exists."""
    import optuna

    storage, uri = config.study_storage, config.tracking_uri
    baseline = Baseline(base.accuracy, base.bytes, base.val_accuracy, config.objectives[2:])
    parent_id = parent.info.run_id
    tracking.retry(lambda: c.update_run(parent_id, status="RUNNING"))
    if resume:
        _record_requested_trials(c, parent_id, config)

    from squeezetune.search.front import FrontLogger, counts
    from squeezetune.search.searcher import OutcomeConstraints, TrackedOptunaSearch, make_sampler, objective_metrics, resumed_seed

    constraints = OutcomeConstraints(config.constraints, base.val_accuracy) if config.constraints else None
    # a sampler seeded as before would replay the configurations already tried: continue its stream instead
    sampler = make_sampler(config.sampler.value, seed=resumed_seed(config.seed, prior_trials), population=config.population)
    front_logger = FrontLogger(uri, parent_id, search=config.name, constraints=config.constraints, baseline=baseline)
    status = SearchStatus(config.trials, baseline, config.constraints.max_drop, progress)

    def run_name(number: int) -> str:
        return f"{config.name}-trial-{number}"

    def new_run(number: int) -> str:
        run = tracking.retry(
            lambda: c.create_run(
                exp_id,
                run_name=run_name(number),
                tags={tracking.PARENT_TAG: parent_id, tracking.SEARCH_TAG: config.name, tracking.ROLE_TAG: "trial", tracking.TRIAL_TAG: str(number)},
            )
        )
        return run.info.run_id

    def reuse_run(run_id: str, number: int) -> None:
        """A retried trial logs into its first attempt's run, renamed after the trial that finishes it."""
        tracking.retry(lambda: c.update_run(run_id, name=run_name(number)))
        tracking.retry(lambda: c.set_tag(run_id, tracking.TRIAL_TAG, str(number)))

    def told(frozen) -> None:
        import optuna

        from squeezetune.search.searcher import RUN_ATTR
        from squeezetune.search.trial import OUTCOME_TAG

        rid = frozen.user_attrs.get(RUN_ATTR) if frozen is not None else None
        if rid and frozen.state == optuna.trial.TrialState.PRUNED:
            # Tune may end a stopped trial's worker before the trial closes its own run: close it here
            tracking.retry(lambda: c.set_tag(rid, OUTCOME_TAG, "stopped"))
            tracking.retry(lambda: c.set_terminated(rid, "KILLED"))
        _, front = front_logger.update(searcher.study)
        status.told(frozen, counts(searcher.study), front)

    fidelity = config.fidelity
    searcher = TrackedOptunaSearch(
        base.space,
        sampler=sampler,
        study_name=config.name,
        storage=storage,
        new_run=new_run,
        reuse_run=reuse_run,
        on_told=told,
        constraints=constraints,
        objectives=objective_metrics(config.objectives),
        full_epochs=fidelity.epochs if fidelity else None,
        deadline=started + 60 * config.time_budget if config.time_budget is not None else None,
    )
    study = searcher.study
    if not resume:
        for params in base.warm_starts:
            study.enqueue_trial(params, user_attrs={"warm_start": True})
    if resume:
        _settle_interrupted(study, c, progress, objective_metrics(config.objectives), constraints)
    n = counts(study)
    done = n["complete"] + n["stopped"] + n["failed"]
    remaining = max(0, config.trials - done)
    if resume:
        progress(f"resuming: {done} of {config.trials} trials done, {remaining} to run")
        status.counts = {k: n[k] for k in ("complete", "stopped", "failed")}  # the status line counts on from there

    nodes: set[str] = set()
    finished = False
    try:
        if remaining > 0:
            history = rung_history(c, study, config) if resume else []
            if history:
                progress(f"MO-ASHA: {len(history)} earlier trials read back from their MLflow runs, {sum(e.final is not None for e in history)} of them complete")
            note = _run_tuner(config, searcher, base, remaining, uri, local=local, status=status, history=history)
            if note:
                progress(note)
                tracking.retry(lambda: c.set_tag(parent_id, EARLY_STOPPING_TAG, note))
        n = counts(study)
        done = n["complete"] + n["stopped"] + n["failed"]
        # a budget that ran out counts as finished, unless trials were cut short (Ctrl-C after it)
        finished = (searcher.out_of_time and not searcher.interrupted) or done >= config.trials
        if searcher.out_of_time and done == 0:
            progress(f"time budget of {config.time_budget:g} min was spent before the first trial could start (dense baseline, Ray start-up): expected a longer --time-budget")
        elif searcher.out_of_time:
            progress(f"time budget of {config.time_budget:g} min spent: no trial started after it, {done} of {config.trials} trials done")
    finally:
        status.close()
        if not finished:
            _tag_cut(study, c)
        n = counts(study)
        points, front = front_logger.update(study) if n["complete"] + n["stopped"] + n["failed"] else ([], [])
        try:
            tracking.retry(lambda: c.set_terminated(parent_id, "FINISHED" if finished else "KILLED"))
        except Exception:
            pass
    errors: list[str] = []
    for t in study.get_trials(deepcopy=False):
        if "node" in t.user_attrs:
            nodes.add(t.user_attrs["node"])
        if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("error") and t.user_attrs["error"] not in errors:
            errors.append(t.user_attrs["error"])
    return SearchOutcome(
        name=config.name,
        tracking_uri=uri,
        parent_run_id=parent_id,
        experiment_id=exp_id,
        trials=config.trials,
        counts=n,
        points=points,
        front=front,
        baseline=baseline,
        seconds=time.perf_counter() - started,
        finished=finished,
        study_storage=storage,
        nodes=nodes,
        errors=errors,
        out_of_time=searcher.out_of_time,
    )


def _record_requested_trials(c, parent_id: str, config: SearchConfig) -> None:
    """A resume that asks for more trials updates the saved config, so a later plain ``--resume``
    finishes those, not the first request (the rest of the saved config stays as started)."""
    saved = load_saved_config(config.tracking_uri, config.experiment, config.name)
    if saved.trials != config.trials:
        tracking.log_json(c, parent_id, saved.replace(trials=config.trials).to_dict(), tracking.CONFIG_ARTIFACT)


def _check_resumable(storage: str, config: SearchConfig) -> int:
    """Before any work: the study to resume exists and ``config.trials`` is not below what it finished.

    Returns how many trials the study holds (in any state), which seeds the resumed sampler.
    """
    import optuna

    from squeezetune.search.front import counts

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=config.name, storage=storage)
    except KeyError:
        raise SqueezeError(f"search {config.name!r} has no Optuna study in {storage} to resume: expected the study_storage it was started with") from None
    n = counts(study)
    done = n["complete"] + n["stopped"] + n["failed"]
    if config.trials < done:
        raise SqueezeError(
            f"--trials {config.trials} is below the {done} trials search {config.name!r} has already finished: expected --trials above {done} to run more, or no --trials to finish the requested ones"
        )
    return len(study.get_trials(deepcopy=False))


def _refuse_existing_study(storage: str, name: str) -> None:
    import optuna

    try:
        names = optuna.study.get_all_study_names(storage)
    except Exception:
        return
    if name in names:
        raise SqueezeError(f"study {name!r} already exists in {storage} without its MLflow parent run: pick another --name or delete it")


def _create_parent(c, exp_id: str, config: SearchConfig, space: Space, dense: dict[str, float]):
    parent = tracking.retry(lambda: c.create_run(exp_id, run_name=config.name, tags={tracking.SEARCH_TAG: config.name, tracking.ROLE_TAG: "parent", "squeezetune.task": config.task}))
    rid = parent.info.run_id
    params = {
        "task": config.task,
        "trials": config.trials,
        "sampler": config.sampler.value,
        "population": config.population,
        "seed": config.seed,
        "cpus_per_trial": config.resources.cpus,
        "gpus_per_trial": config.resources.gpus,
        "study_storage": config.study_storage,
        "objectives": ",".join(config.objectives),
        "validation": config.validation,
        **({f"fidelity.{k}": v for k, v in asdict(config.fidelity).items()} if config.fidelity else {"fidelity": "none"}),
        **{f"constraint.{k}": v for k, v in config.constraints.to_dict().items()},
        **{f"space.{k.name}": k.describe() for k in space.knobs},
    }
    tracking.retry(lambda: c.log_batch(rid, params=tracking.params_batch(params), metrics=tracking.metrics_batch(dense)))
    tracking.log_json(c, rid, config.to_dict(), tracking.CONFIG_ARTIFACT)
    tracking.retry(lambda: c.log_text(rid, space.table() + "\n", "space.txt"))
    return parent


def _tag_cut(study, c) -> None:
    """Tag the runs of the trials an interruption cut short (still RUNNING in the study) as interrupted:
    their workers, stopped by Tune, tagged them as MO-ASHA's stops. ``--resume`` reruns them."""
    import optuna

    from squeezetune.search.searcher import RUN_ATTR
    from squeezetune.search.trial import OUTCOME_TAG

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        rid = t.user_attrs.get(RUN_ATTR)
        try:
            if rid and c.get_run(rid).info.status != "FINISHED":
                c.set_tag(rid, OUTCOME_TAG, "interrupted")
        except Exception:  # noqa: BLE001 - best effort on the way out; --resume tags them too
            pass


def _settle_interrupted(study, c, progress: Progress, objectives: list[tuple[str, str]], constraints: OutcomeConstraints | None = None) -> None:
    """Trials a dead driver left RUNNING: told from their finished MLflow run, else re-queued."""
    import optuna

    from squeezetune.search import _adapters
    from squeezetune.search.searcher import ERROR_ATTR, INTERRUPTED_ATTR, REQUEUES_ATTR, RUN_ATTR, objective_values, requeue
    from squeezetune.search.trial import OUTCOME_TAG

    waiting = study.get_trials(deepcopy=True, states=(optuna.trial.TrialState.WAITING,))
    requeued = False
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        rid = t.user_attrs.get(RUN_ATTR)
        run = None
        if rid is not None:
            try:
                run = c.get_run(rid)
            except Exception:
                run = None
        m = run.data.metrics if run is not None else {}
        live = _adapters.reopen(study, t)
        if run is not None and run.info.status == "FINISHED" and math.isfinite(m.get("accuracy", math.nan)) and "bytes" in m:
            for key in (*OUTCOME, "epoch"):
                if key in m:
                    live.set_user_attr(key, m[key])
            if constraints is not None:
                constraints.set_on(live, m)
            study.tell(t.number, objective_values(objectives, m))
            progress(f"trial {t.number}: finished before the interruption, recorded from its MLflow run")
        elif run is not None and run.info.status == "FAILED" and run.data.tags.get("error"):
            live.set_user_attr(ERROR_ATTR, run.data.tags["error"])
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        else:  # stopped at a rung or cut short: run it again (a stopped trial's rung is not recorded)
            live.set_user_attr(INTERRUPTED_ATTR, True)
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            requeue(study, t, run_id=rid, requeues=int(t.user_attrs.get(REQUEUES_ATTR, 0)))
            if run is not None:  # the interruption ended it as a stop would: until its rerun, it is neither
                tracking.retry(lambda rid=rid: c.set_tag(rid, OUTCOME_TAG, "interrupted"))
            progress(f"trial {t.number}: interrupted, queued again with its MLflow run {rid}")
            requeued = True
    if requeued:
        _behind_the_retries(study, waiting)


def _behind_the_retries(study, waiting) -> None:
    """Queue the trials that were waiting before a resume (warm starts not yet run) again, behind the
    interrupted trials just re-queued: those were among the search's first trials, and a search that
    runs fewer trials than are queued must rerun them, not start ones it would never have reached.
    Each old entry ends as FAIL with :data:`DEFERRED_ATTR` (counted nowhere) and its copy takes its place."""
    import optuna

    from squeezetune.search.searcher import DEFERRED_ATTR

    storage = study._storage
    for t in waiting:
        storage.set_trial_user_attr(t._trial_id, DEFERRED_ATTR, True)
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        attrs = {k: v for k, v in t.user_attrs.items() if k != DEFERRED_ATTR}
        study.enqueue_trial(t.system_attrs.get("fixed_params", dict(t.params)), user_attrs=attrs, skip_if_exists=False)


def _run_tuner(config: SearchConfig, searcher, base: _Baseline, remaining: int, uri: str, *, local: bool, status: SearchStatus, history: Sequence[Earlier] = ()) -> str | None:
    """Run the trials; returns what early stopping did, in a line, under ``early_stopping: auto``."""
    import numpy as np
    from ray import tune

    from squeezetune.compression.unstructured.pruning import plain_state_dict
    from squeezetune.search.trial import TrialSetup, run_trial

    trial_uri = _uri_for_trials(uri, local=local)
    fidelity = config.fidelity
    # Tune's own experiment folder (its tuner.pkl, trial dirs) is scratch: outcomes live in the Optuna
    # study and MLflow, and resume never reads it, so it is removed when the search ends.
    scratch = Path(tempfile.mkdtemp(prefix=f"squeezetune-tune-{config.name}-"))
    try:
        setup = TrialSetup(
            search=config.name,
            task=config.task,
            tracking_uri=trial_uri,
            space=space_config(config),
            constraints=config.constraints.to_dict(),
            dense_accuracy=base.accuracy,
            dense_val_accuracy=base.val_accuracy,
            seed=config.seed,
            threads=max(1, int(config.resources.cpus)),
            task_path=str(Path.cwd()),
            rungs=fidelity.rungs if fidelity else (),
            rung_stage=fidelity_stage(config.space) or "",
            full_epochs=fidelity.epochs if fidelity else 0,
            latency=needs_latency(config),
            sensitivity=base.space.sensitivity,
        )
        state = {k: v.detach().cpu().numpy() for k, v in plain_state_dict(base.dense).items()}
        data = tuple(np.ascontiguousarray(a.numpy()) for split in base.splits for a in (split.x, split.y))
        trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup, dense_state=state, data=data), config.resources.to_ray())
        max_concurrent = config.max_concurrent or default_max_concurrent(config.resources)
        slots = min(max_concurrent, _capacity(config.resources))
        scheduler = scheduler_for(config, base.val_accuracy, history, trials=remaining, slots=slots, budget_s=searcher.time_left(), say=status.say)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=remaining,
                max_concurrent_trials=max_concurrent,
                # on several nodes a cached actor may sit on a node that died: a retried trial then
                # fails against it again, so actors are reused only on a single machine
                reuse_actors=_single_node(),
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str(scratch),
                failure_config=tune.FailureConfig(max_failures=config.max_failures),
                callbacks=[status.callback()],
                verbose=0,
            ),
        )
        tuner.fit()
        return scheduler.summary() if scheduler is not None else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _capacity(resources) -> int:
    """How many trials the Ray cluster can run at once, by its CPUs and GPUs (at least 1)."""
    import ray

    total = ray.cluster_resources()
    fits = [int(total.get(key, 0) // need) for key, need in (("CPU", resources.cpus), ("GPU", resources.gpus)) if need > 0]
    return max(1, min(fits)) if fits else 1


def _single_node() -> bool:
    import ray

    return len([n for n in ray.nodes() if n.get("Alive")]) <= 1


def fidelity_stage(space: Mapping[str, Any]) -> str | None:
    """The stage whose epochs are the fidelity: ``finetune`` unless the space turns it off, else a
    ``gradual_prune`` it names (rungs then fall inside the pruning schedule); ``None``: neither."""
    if space.get("finetune", True) is not False:
        return "finetune"
    if space.get("gradual_prune") not in (None, False):
        return "gradual_prune"
    return None


def space_config(config: SearchConfig) -> dict[str, Any]:
    """The space a search samples from: the user's, with fine-tune lengths set by the fidelity.

    Under multi-fidelity the fidelity stage (:func:`fidelity_stage`: ``finetune``, or the training
    of ``gradual_prune``) always runs ``fidelity.epochs`` (MO-ASHA cuts trials short, not the
    sampler) and ``finetune_centroids`` ``fidelity.centroid_epochs``; a space that also names those
    epochs is a one-line error.
    """
    space = dict(config.space)
    if config.fidelity is None:
        return space
    stage = fidelity_stage(space)
    if stage is not None:
        _fix_epochs(space, ("gradual_prune", "finetune") if stage == "gradual_prune" else (stage,), config.fidelity.epochs, "epochs")
    _fix_epochs(space, ("finetune_centroids",), config.fidelity.centroid_epochs, "centroid_epochs")
    return space


def _fix_epochs(space: dict[str, Any], path: tuple[str, ...], epochs: int, where: str) -> None:
    """Set ``epochs`` at ``path`` in ``space`` (copying each level), as derive_space reads it: a stage
    turned off is left alone; ``null``/``true`` (and ``false`` for a nested setting) mean its
    defaults; a value that is not a mapping is left for derive_space to name."""
    node = space
    for depth, key in enumerate(path):
        value = node.get(key)
        if value is False and depth == 0:
            return
        if value is None or isinstance(value, bool):
            value = {}
        if not isinstance(value, Mapping):
            return
        node[key] = node = dict(value)
    if "epochs" in node:
        raise SqueezeError(f"space.{'.'.join(path)}.epochs is set by the fidelity under multi-fidelity search: set fidelity.{where} instead, or fidelity: null to search epochs as a knob")
    node["epochs"] = epochs


def needs_latency(config: SearchConfig) -> bool:
    """Trials time the decoded model only when an objective or a constraint reads latency."""
    return len(config.objectives) > 2 or config.constraints.max_latency_ms is not None


@dataclass(frozen=True)
class Earlier:
    """A trial a resumed search ran before: its results at the rungs it reached, and its final
    outcome when it completed (what :meth:`~squeezetune.search.scheduler.MOASHA.seed` takes)."""

    number: int
    at_rungs: dict[int, dict[str, float]]
    final: dict[str, float] | None
    warm_start: bool = False


def rung_history(c, study, config: SearchConfig) -> list[Earlier]:
    """The completed and stopped trials of ``study``, read back from their MLflow runs' metric steps
    (a rung's figures at its epoch, the final outcome at the full schedule's, with the run's wall time
    as ``time_total_s``)."""
    import optuna

    from squeezetune.search.searcher import RUN_ATTR, objective_metrics

    fidelity = config.fidelity
    if fidelity is None or not fidelity.early_stopping or not fidelity.rungs:
        return []  # no MO-ASHA to seed
    keys = {"val_accuracy", "accuracy", "bytes", "macs", *(m for m, _ in objective_metrics(config.objectives))}
    if config.constraints.max_latency_ms is not None:
        keys.add(config.constraints.latency)
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)):
        rid = t.user_attrs.get(RUN_ATTR)
        if rid is None:
            continue
        steps: dict[int, dict[str, float]] = {}
        for key in sorted(keys):
            for m in tracking.retry(lambda key=key: c.get_metric_history(rid, key)):
                steps.setdefault(int(m.step), {})[key] = float(m.value)
        at_rungs = {r: steps[r] for r in fidelity.rungs if r in steps}
        final = steps.get(fidelity.epochs, steps.get(0)) if t.state == optuna.trial.TrialState.COMPLETE else None  # step 0: no fidelity stage
        if final is not None:  # its wall time, for early_stopping: auto
            info = tracking.retry(lambda rid=rid: c.get_run(rid)).info
            if info.end_time and info.start_time and info.end_time > info.start_time:
                final = {**final, "time_total_s": (info.end_time - info.start_time) / 1000}
        out.append(Earlier(t.number, at_rungs, final, bool(t.user_attrs.get("warm_start"))))
    return out


def scheduler_for(config: SearchConfig, dense_val_accuracy: float, history: Sequence[Earlier] = (), *, trials: int, slots: int, budget_s: float | None = None, say: Progress | None = None):
    """MO-ASHA over the search's objectives (``None``: every trial runs the full schedule), seeded
    with the trials a resumed search ran before (``history``). Under ``early_stopping: auto`` it
    stops no trial while ``trials`` full schedules, ``slots`` at a time, fit in ``budget_s`` (default:
    :data:`~squeezetune.search.config.AUTO_MINUTES`), and tells ``say`` what it measured."""
    fidelity = config.fidelity
    if fidelity is None or not fidelity.early_stopping or not fidelity.rungs:
        return None
    from squeezetune.search.config import AUTO_MINUTES
    from squeezetune.search.scheduler import MOASHA
    from squeezetune.search.searcher import OutcomeConstraints, objective_metrics

    constraints = OutcomeConstraints(config.constraints, dense_val_accuracy)

    def violation(result: dict) -> float:
        return sum(max(0.0, v) for v in constraints.violations(result).values()) if config.constraints else 0.0

    auto = fidelity.early_stopping == "auto"
    scheduler = MOASHA(
        objective_metrics(config.objectives),
        max_t=fidelity.epochs,
        min_t=fidelity.min_epochs,
        eta=fidelity.reduction_factor,
        violation=violation,
        budget_s=(60.0 * AUTO_MINUTES if budget_s is None else budget_s) if auto else None,
        trials=max(1, trials),
        slots=max(1, min(slots, trials)),
        say=say,
    )
    for earlier in history:
        scheduler.seed(f"earlier-{earlier.number}", earlier.at_rungs, earlier.final, warm_start=earlier.warm_start)
    return scheduler


def _cluster_address(config: SearchConfig) -> str | None:
    """The cluster to join: the config's ``ray_address``, else ``RAY_ADDRESS`` (set by ``ray job submit``);
    ``None`` for a local Ray (also when ``ray_address`` is ``local``)."""
    from squeezetune.search.config import LOCAL_RAY

    if config.ray_address == LOCAL_RAY:
        return None
    return config.ray_address or os.environ.get("RAY_ADDRESS") or None


def _uri_for_trials(uri: str, *, local: bool) -> str:
    """The tracking URI as trials on other machines must see it (``localhost`` means the driver's host).

    Unchanged for a local Ray, a URI that names another host, or a cluster whose nodes all run on
    the driver's machine (where ``localhost`` reaches the server from every node).
    """
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if local or parsed.hostname not in ("localhost", "127.0.0.1", "::1"):
        return uri
    import ray
    import ray.util

    host = ray.util.get_node_ip_address()
    if all(n.get("NodeManagerAddress") == host for n in ray.nodes() if n.get("Alive")):
        return uri
    return uri.replace(parsed.netloc, f"{host}:{parsed.port}" if parsed.port else host, 1)


def connect_ray(config: SearchConfig, progress: Progress = _quiet) -> bool:
    """Start a local Ray or join the configured cluster; ``True`` when this call started it (and so
    must shut it down). Already connected (a caller's ``ray.init``): ``False``, nothing done.

    A cluster that does not answer, or a local machine without the GPUs a trial asks for, is a
    one-line :class:`SqueezeError` (Ray is shut down again first).
    """
    import logging

    import ray

    if ray.is_initialized():
        return False
    # result.json loggers are off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS): outcomes live in Optuna + MLflow
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # on Ctrl-C Tune suggests Tuner.restore of its scratch folder, which is removed: --resume is the way
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": True}
    address = _cluster_address(config)
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            ray.shutdown()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            source = "--ray-address" if config.ray_address else "RAY_ADDRESS"
            raise SqueezeError(f"{source} {address!r}: no Ray cluster answers there ({first[:200]}): start one with 'ray start --head', or pass --ray-address local") from None
        progress(f"joined the Ray cluster at {address}")
        return True
    need_cpus = max(1, math.ceil(config.resources.cpus))
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need_cpus), **kwargs)
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if config.resources.gpus > gpus:
        ray.shutdown()
        raise SqueezeError(
            f"resources.gpus={config.resources.gpus:g} per trial, but this machine has {gpus:g} GPU(s) for Ray: "
            f"expected --gpus-per-trial 0 (or at most {gpus:g}), or --ray-address of a cluster with GPUs"
        )
    return True
