"""Guarantees of the 1-D k-means used for weight sharing (squeezetune.compression.unstructured.kmeans)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezetune.compression.unstructured import kmeans as kmeans_module
from squeezetune.compression.unstructured.kmeans import (
    Init,
    fit_kmeans_1d,
    initial_centroids,
    kmeans_1d,
    quantize_to_codebook,
)
from squeezetune.errors import SqueezeError


def reference_lloyd(values: np.ndarray, start: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Plain O(nk) Lloyd with the documented conventions: float32 centroids holding the float64
    member mean, nearest-centroid ties to the lower index, empty clusters keep their centroid,
    stop when an update leaves every assignment unchanged."""
    x = values.astype(np.float32).astype(np.float64)

    def nearest(c: np.ndarray) -> np.ndarray:
        return np.argmin(np.abs(x[:, None] - c.astype(np.float64)[None, :]), axis=1)

    centroids = start.astype(np.float32)
    labels = nearest(centroids)
    for n_iter in range(1, max_iter + 1):
        updated = centroids.copy()
        for j in range(centroids.size):
            members = x[labels == j]
            if members.size:
                updated[j] = np.float32(members.mean())
        centroids = np.sort(updated)
        new_labels = nearest(centroids)
        if np.array_equal(new_labels, labels):
            return centroids, new_labels, n_iter, True
        labels = new_labels
    return centroids, labels, max_iter, False


def assert_nearest(values: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> None:
    x = np.asarray(values, dtype=np.float32).reshape(-1).astype(np.float64)
    distance = np.abs(x[:, None] - centroids.astype(np.float64)[None, :])
    assert np.array_equal(distance[np.arange(x.size), labels], distance.min(axis=1))


def mixture(n: int, seed: int) -> np.ndarray:
    """Weight-like data: a few bumps of different widths, float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 0.1, size=5)
    return (centres[rng.integers(0, 5, size=n)] + rng.normal(0.0, 0.03, size=n)).astype(np.float32)


@pytest.mark.parametrize("init", list(Init))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_iter", [3, 50])
def test_matches_reference_lloyd(init: Init, seed: int, max_iter: int) -> None:
    x = mixture(1500, seed)
    k = 24
    start = initial_centroids(x, k, init=init, seed=seed)
    expected_c, expected_labels, expected_iter, expected_converged = reference_lloyd(x, start, max_iter)
    result = fit_kmeans_1d(x, k, init=init, max_iter=max_iter, seed=seed)
    np.testing.assert_array_equal(result.centroids, expected_c)
    np.testing.assert_array_equal(result.labels, expected_labels)
    assert result.n_iter == expected_iter
    assert result.converged == expected_converged


def test_converges_to_means_of_members() -> None:
    x = mixture(3000, seed=7)
    result = fit_kmeans_1d(x, 16, max_iter=500)
    assert result.converged
    assert result.n_iter < 500
    assert_nearest(x, result.centroids, result.labels)
    for j, c in enumerate(result.centroids):
        members = x[result.labels == j].astype(np.float64)
        if members.size:  # the float64 mean, rounded to float32
            assert abs(c - members.mean()) <= abs(np.spacing(c))


def test_output_types_shapes_and_order() -> None:
    x = mixture(1000, seed=3).reshape(10, 100)
    centroids, labels = kmeans_1d(x, 32)
    assert centroids.dtype == np.float32 and centroids.shape == (32,)
    assert np.all(np.diff(centroids) >= 0)
    assert labels.shape == (1000,) and np.issubdtype(labels.dtype, np.integer)
    assert labels.min() >= 0 and labels.max() < 32
    assert_nearest(x, centroids, labels)


def test_linear_init_is_evenly_spaced_min_to_max() -> None:
    x = mixture(500, seed=1)
    start = initial_centroids(x, 9, init=Init.LINEAR)
    np.testing.assert_array_equal(start, np.linspace(float(x.min()), float(x.max()), 9).astype(np.float32))
    assert start[0] == x.min() and start[-1] == x.max()


def test_density_init_is_evenly_spaced_quantiles() -> None:
    x = mixture(1001, seed=2)
    k = 10
    start = initial_centroids(x, k, init="density")
    positions = [((2 * j + 1) * x.size) // (2 * k) for j in range(k)]
    np.testing.assert_array_equal(start, np.sort(x)[positions])
    # Each starting centroid sits in the middle of its equal-count slice of the CDF.
    below = np.searchsorted(np.sort(x), start, side="left") / x.size
    np.testing.assert_allclose(below, (np.arange(k) + 0.5) / k, atol=1.0 / x.size)


def test_forgy_init_draws_distinct_data_values_by_seed() -> None:
    x = mixture(800, seed=4)
    start = initial_centroids(x, 20, init=Init.FORGY, seed=11)
    assert start.dtype == np.float32 and start.shape == (20,)
    assert np.unique(start).size == 20
    assert np.all(np.diff(start) > 0)
    assert np.isin(start, x).all()
    np.testing.assert_array_equal(start, initial_centroids(x, 20, init=Init.FORGY, seed=11))
    assert not np.array_equal(start, initial_centroids(x, 20, init=Init.FORGY, seed=12))


def test_forgy_weights_values_by_frequency_and_finds_rare_values() -> None:
    # 99.9% zeros (pruned weights): zero is drawn almost surely, and the rare values still
    # complete the k distinct picks (the fallback after the batched draws).
    x = np.zeros(20_000, dtype=np.float32)
    x[:20] = np.arange(1, 21, dtype=np.float32)
    for seed in range(5):
        start = initial_centroids(x, 12, init="forgy", seed=seed)
        assert np.unique(start).size == 12 and 0.0 in start and np.isin(start, x).all()


def test_forgy_with_fewer_distinct_values_than_k_takes_them_all() -> None:
    x = np.array([3.0, 1.0, 1.0, 2.0, 3.0, 3.0], dtype=np.float32)
    np.testing.assert_array_equal(initial_centroids(x, 5, init="forgy"), [1.0, 2.0, 3.0, 3.0, 3.0])
    centroids, labels = kmeans_1d(x, 5, init="forgy")
    np.testing.assert_array_equal(centroids[labels], x)  # every value kept exactly


@pytest.mark.parametrize("init", list(Init))
def test_fewer_distinct_values_than_k_still_clusters(init: Init) -> None:
    x = np.array([0.5] * 10 + [2.0] * 5, dtype=np.float32)
    centroids, labels = kmeans_1d(x, 4, init=init)
    assert centroids.shape == (4,) and np.all(np.diff(centroids) >= 0)
    np.testing.assert_array_equal(centroids[labels], x)


def test_constant_values() -> None:
    centroids, labels = kmeans_1d(np.full(10, 1.25, dtype=np.float32), 3)
    np.testing.assert_array_equal(centroids, [1.25, 1.25, 1.25])
    np.testing.assert_array_equal(labels, np.zeros(10))


def test_empty_cluster_keeps_its_centroid() -> None:
    # Linear init puts a centroid at 5.0, in the gap: nothing is ever nearest to it.
    x = np.array([0.0, 0.1, 0.2, 9.8, 9.9, 10.0], dtype=np.float32)
    result = fit_kmeans_1d(x, 3, init="linear")
    assert result.converged
    np.testing.assert_allclose(result.centroids, [0.1, 5.0, 9.9], rtol=1e-6)
    assert 1 not in result.labels


def test_value_on_midpoint_goes_to_lower_centroid() -> None:
    labels = quantize_to_codebook(np.array([1.0, 1.5, 2.0], dtype=np.float32), np.array([1.0, 2.0]))
    np.testing.assert_array_equal(labels, [0, 0, 1])


def test_quantize_to_codebook_matches_kmeans_labels_and_brute_force() -> None:
    x = mixture(2000, seed=5)
    centroids, labels = kmeans_1d(x, 16, max_iter=5)
    np.testing.assert_array_equal(quantize_to_codebook(x, centroids), labels)
    shuffled = np.random.default_rng(0).permutation(centroids)
    got = quantize_to_codebook(torch.from_numpy(x.reshape(40, 50)), shuffled)
    np.testing.assert_array_equal(shuffled[got], centroids[labels])
    assert_nearest(x, shuffled, got)


def test_quantize_to_codebook_rejects_bad_input() -> None:
    with pytest.raises(SqueezeError, match="centroids is empty"):
        quantize_to_codebook([1.0], [])
    with pytest.raises(SqueezeError, match="nan at flat index 1"):
        quantize_to_codebook([1.0, float("nan")], [0.0, 1.0])
    assert quantize_to_codebook(np.empty(0), [0.0, 1.0]).shape == (0,)
    np.testing.assert_array_equal(quantize_to_codebook([5.0, -5.0], [2.0]), [0, 0])


@pytest.mark.parametrize("k", [1, 201, 0, -3, 2.0, "8", True, None])
def test_bad_k_names_value_and_range(k: object) -> None:
    x = mixture(200, seed=0)
    with pytest.raises(SqueezeError, match=r"\[2, 200\] \(the number of values to cluster\)") as info:
        kmeans_1d(x, k)  # type: ignore[arg-type]
    assert f"k={k!r}" in str(info.value) or f"k={k}" in str(info.value)


def test_k_error_message_reads_as_documented() -> None:
    with pytest.raises(SqueezeError) as info:
        kmeans_1d(mixture(200, seed=0), 300)
    assert str(info.value) == "k=300 must be an int in [2, 200] (the number of values to cluster)"


def test_numpy_integer_k_is_accepted() -> None:
    centroids, _ = kmeans_1d(mixture(100, seed=0), np.int64(4))
    assert centroids.shape == (4,)


@pytest.mark.parametrize("values", [np.array([]), torch.empty(0), []])
def test_empty_input(values: object) -> None:
    with pytest.raises(SqueezeError, match="values is empty"):
        kmeans_1d(values, 2)  # type: ignore[arg-type]


def test_single_value() -> None:
    with pytest.raises(SqueezeError, match="values holds 1 value"):
        kmeans_1d(np.array([1.0]), 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e300])
def test_non_finite_values(bad: float) -> None:
    x = np.array([0.0, 1.0, 2.0, bad, 3.0])
    with pytest.raises(SqueezeError, match=r"must be finite .* at flat index 3 \(1 non-finite"):
        kmeans_1d(x, 2)


def test_bad_init_max_iter_seed_and_dtype() -> None:
    x = mixture(50, seed=0)
    with pytest.raises(SqueezeError, match=r"init='kmeans\+\+' must be one of \['forgy', 'density', 'linear'\]"):
        kmeans_1d(x, 4, init="kmeans++")  # type: ignore[arg-type]
    with pytest.raises(SqueezeError, match="max_iter=0 must be an int >= 1"):
        kmeans_1d(x, 4, max_iter=0)
    with pytest.raises(SqueezeError, match="seed=-1 must be an int >= 0"):
        kmeans_1d(x, 4, seed=-1)
    with pytest.raises(SqueezeError, match="dtype torch.complex64"):
        kmeans_1d(torch.zeros(5, dtype=torch.complex64), 2)
    with pytest.raises(SqueezeError, match="dtype <U1"):
        kmeans_1d(np.array(list("abcde")), 2)


@pytest.mark.parametrize("init", list(Init))
def test_deterministic_for_a_seed(init: Init) -> None:
    x = mixture(1000, seed=9)
    first = kmeans_1d(x, 12, init=init, seed=3)
    second = kmeans_1d(x.copy(), 12, init=init, seed=3)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_torch_tensor_input_equals_numpy() -> None:
    x = mixture(600, seed=6)
    tensor = torch.from_numpy(x).reshape(20, 30).requires_grad_()
    from_torch = kmeans_1d(tensor, 8)
    from_numpy = kmeans_1d(x, 8)
    np.testing.assert_array_equal(from_torch[0], from_numpy[0])
    np.testing.assert_array_equal(from_torch[1], from_numpy[1])
    half = kmeans_1d(tensor.detach().to(torch.bfloat16), 8)
    assert half[0].dtype == np.float32 and half[1].shape == (600,)


def test_does_not_modify_input() -> None:
    x = mixture(300, seed=8)
    before = x.copy()
    kmeans_1d(x, 5)
    np.testing.assert_array_equal(x, before)


def test_read_only_input() -> None:
    x = mixture(300, seed=8)
    x.flags.writeable = False
    centroids, labels = kmeans_1d(x, 5)
    assert_nearest(x, centroids, labels)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, width=32), min_size=2, max_size=120),
    data=st.data(),
    init=st.sampled_from(list(Init)),
)
def test_property_any_data_any_k(values: list[float], data: st.DataObject, init: Init) -> None:
    x = np.array(values, dtype=np.float32)
    k = data.draw(st.integers(2, x.size), label="k")
    result = fit_kmeans_1d(x, k, init=init, max_iter=200, seed=1)
    assert result.centroids.shape == (k,) and result.centroids.dtype == np.float32
    assert np.all(np.diff(result.centroids) >= 0)
    assert result.labels.shape == (x.size,)
    assert_nearest(x, result.centroids, result.labels)
    np.testing.assert_array_equal(quantize_to_codebook(x, result.centroids), result.labels)
    if result.converged:
        for j, c in enumerate(result.centroids):
            members = x[result.labels == j].astype(np.float64)
            if members.size:
                assert c == pytest.approx(members.mean(), rel=1e-6, abs=1e-6)
    if np.unique(x).size <= k and init is Init.FORGY:
        np.testing.assert_array_equal(result.centroids[result.labels], x)


def test_docstring_examples_run() -> None:
    failures, tried = doctest.testmod(kmeans_module)
    assert tried > 0 and failures == 0
