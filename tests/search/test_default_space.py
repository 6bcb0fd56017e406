"""A real search with no ``space:``: max-compression's stages, warm-started from that recipe, with
MO-ASHA's rungs inside gradual pruning (local Ray, real sqlite MLflow store, lenet300-digits)."""

from __future__ import annotations

import pytest
import yaml

pytestmark = pytest.mark.slow

TRIALS = 8  # the recipe, its four neighbours, three sampled
EPOCHS = 3
CONFIG = {
    "name": "default-space",
    "trials": TRIALS,
    "sampler": "random",
    "seed": 3,
    "max_concurrent": 2,
    "fidelity": {"epochs": EPOCHS, "centroid_epochs": 1, "min_epochs": 1, "reduction_factor": 3, "early_stopping": True},  # one rung, at 1 epoch; MO-ASHA always on
}


@pytest.fixture(scope="module")
def search(workdir, cli):
    path = workdir / "search.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    code, out, err = cli(["search", "--config", str(path)])
    assert code == 0, err
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("squeezetune").experiment_id], max_results=1000)
    return err, c, [r for r in runs if r.data.tags.get("mlflow.parentRunId")]


def test_the_first_trial_is_the_max_compression_recipe_on_the_fidelitys_schedule(search):
    from squeezetune.compression.recipes import MAX_RATES

    err, _, children = search
    assert "MO-ASHA compares trials at epochs 1 of 3 of gradual pruning" in err and "warm starts: 1 recipe and 4 neighbours" in err
    [first] = [r for r in children if r.data.tags["squeezetune.trial"] == "0"]
    params = first.data.params
    rates = MAX_RATES["lenet300"]
    assert {n: float(params[f"gradual_prune.{n}.keep_fraction"]) for n in rates["keep"]} == rates["keep"]
    assert {n: int(params[f"share.{n}.bits"]) for n in rates["bits"]} == rates["bits"]
    assert int(params["gradual_prune.finetune.epochs"]) == EPOCHS and float(params["gradual_prune.finetune.group_lasso"]) == rates["prune"]["group_lasso"]
    assert first.data.tags["squeezetune.outcome"] == "complete"  # a warm start is never stopped


def test_the_recipes_neighbours_run_next_and_are_never_stopped(search):
    """Trials 1-4: max-compression with 15% fewer weights kept, with one bit less on fc1 (the
    largest tensor), with 30% more weights kept, with 50% more of fc1's weights kept; each on the
    full schedule."""
    from squeezetune.compression.recipes import MAX_RATES

    _, _, children = search
    by_number = {int(r.data.tags["squeezetune.trial"]): r for r in children}
    rates = MAX_RATES["lenet300"]
    fewer_bits = {**rates["bits"], "fc1": rates["bits"]["fc1"] - 1}
    for number, factor, fc1, bits in ((1, 0.85, 1.0, rates["bits"]), (2, 1.0, 1.0, fewer_bits), (3, 1.3, 1.0, rates["bits"]), (4, 1.0, 1.5, rates["bits"])):
        params = by_number[number].data.params
        assert {n: float(params[f"gradual_prune.{n}.keep_fraction"]) for n in rates["keep"]} == pytest.approx({n: f * factor * (fc1 if n == "fc1" else 1.0) for n, f in rates["keep"].items()})
        assert {n: int(params[f"share.{n}.bits"]) for n in rates["bits"]} == bits
        assert by_number[number].data.tags["squeezetune.outcome"] == "complete"


def test_a_rung_inside_gradual_pruning_measures_the_model_at_its_final_targets(search):
    _, c, children = search
    stopped = [r for r in children if r.data.tags.get("squeezetune.outcome") == "stopped"]
    complete = [r for r in children if r.data.tags.get("squeezetune.outcome") == "complete"]
    assert complete and len(stopped) + len(complete) == TRIALS  # (which ones MO-ASHA stops depends on timing)
    for r in stopped:
        assert [m.step for m in c.get_metric_history(r.info.run_id, "val_accuracy")] == [1]
    for r in complete:
        history = {m.step: m.value for m in c.get_metric_history(r.info.run_id, "bytes")}
        assert sorted(history) == [1, EPOCHS]
        # after 1 of 3 epochs (ramp 0.8) the live model keeps about a fifth of every tensor, ten times
        # and more its final weights; the rung's copy is pruned to the final targets, so its file is
        # within a small factor of the final one, which also loses its dead neurons and input pixels
        # (many more of them when a sampled trial keeps a few dozen of fc2's weights: only the recipe
        # and its neighbours, trials 0-4, prune moderately enough for a fixed factor)
        assert history[1] >= 0.98 * history[EPOCHS]  # the same kept weights, coded a few bytes apart at most
        if int(r.data.tags["squeezetune.trial"]) <= 4:
            assert history[1] <= 2.5 * history[EPOCHS]
