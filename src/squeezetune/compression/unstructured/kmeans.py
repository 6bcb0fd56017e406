"""1-D k-means for Deep Compression weight sharing.

A layer's weights are clustered into ``k`` shared values (centroids); each weight then stores
only the index of its centroid. Deep Compression (Han et al., 2016) compares three ways to
place the starting centroids, offered here as :class:`Init`.

How it is fast
--------------
In one dimension every cluster of Lloyd's algorithm is an interval of the sorted data: with
sorted centroids ``c``, cluster ``j`` holds exactly the values in ``(m[j-1], m[j]]``, where
``m[j] = (c[j] + c[j+1]) / 2`` are the midpoints. So the data is sorted once (``O(n log n)``)
and float64 prefix sums of the sorted values are kept (anchored at zero, see
:func:`_anchored_prefix`); each Lloyd iteration is then
``np.searchsorted`` of the ``k - 1`` midpoints into the sorted data (the cluster boundaries),
cluster sums and counts from the prefix sum, and new means: ``O(k log n)`` per iteration,
independent of ``n``. The final labels, in the caller's order, come from one vectorized
binary search of every value among the midpoints. Clustering 10 million weights into 256
centroids takes under a second on two cores (see ``benchmarks/bench_kmeans.py``).

The result is exactly Lloyd's algorithm with these conventions, which the tests pin down
against a plain ``O(nk)`` implementation:

* Values are clustered at float32 precision (the precision of the weights), and centroids are
  stored as float32: each update is the float64 mean of the members, rounded to float32.
* A value exactly on the midpoint of two adjacent centroids goes to the *lower* centroid.
  Every value is always assigned to a nearest centroid.
* An empty cluster keeps its previous centroid.
* Lloyd stops when an update leaves every assignment unchanged (converged) or after
  ``max_iter`` updates. The returned labels are the nearest-centroid assignment for the
  returned centroids; at convergence each non-empty cluster's centroid is its members' mean.
* Fewer distinct values than ``k`` is allowed: some centroids then coincide or own no values
  (they keep their place), so the result still has ``k`` sorted centroids. Where two centroids
  are equal, values up to them take the lower index and values above the upper one (both are
  equally near).

>>> import numpy as np
>>> centroids, labels = kmeans_1d(np.array([0.0, 0.1, 0.9, 1.0]), k=2)
>>> centroids
array([0.05, 0.95], dtype=float32)
>>> labels
array([0, 0, 1, 1])
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Sequence, Union

import numpy as np
import torch

from squeezetune.errors import SqueezeError

__all__ = ["Init", "KMeansResult", "fit_kmeans_1d", "initial_centroids", "kmeans_1d", "quantize_to_codebook"]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]


class Init(str, Enum):
    """How the starting centroids are placed (Deep Compression, "initialization of shared weights").

    * ``FORGY``: ``k`` distinct values drawn at random from the data (seeded). Values are drawn
      like random weights, so a value held by many weights is more likely to be picked; a value
      already drawn is skipped.
    * ``DENSITY``: centroids at evenly spaced quantiles of the data's CDF: centroid ``j`` is the
      sorted value at position ``floor((j + 1/2) * n / k)``, the middle of the ``j``-th of ``k``
      equal-count slices.
    * ``LINEAR``: ``k`` centroids evenly spaced from the smallest to the largest value. Deep
      Compression finds it works best, as it keeps centroids for the rare large weights.
    """

    FORGY = "forgy"
    DENSITY = "density"
    LINEAR = "linear"


@dataclass(frozen=True, eq=False)
class KMeansResult:
    """What :func:`fit_kmeans_1d` found.

    ``centroids`` is float32 of shape ``(k,)``, sorted ascending; ``labels`` is int64 of shape
    ``(n,)`` indexing ``centroids`` for each value in flattened order; ``n_iter`` counts Lloyd
    updates; ``converged`` says whether the last update left every assignment unchanged.
    """

    centroids: np.ndarray
    labels: np.ndarray
    n_iter: int
    converged: bool


def kmeans_1d(
    values: ArrayLike,
    k: int,
    init: Init | str = Init.LINEAR,
    max_iter: int = 20,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ``values`` (any shape, flattened) into ``k`` centroids with Lloyd's algorithm.

    Returns ``(centroids, labels)``: float32 centroids of shape ``(k,)`` sorted ascending, and
    int64 labels of shape ``(n,)`` with ``centroids[labels]`` the shared value of each weight.
    ``k`` must be in ``[2, n]``; values must be finite. ``seed`` only matters for
    :attr:`Init.FORGY`. See the module docstring for ties, empty clusters and precision.

    >>> import torch
    >>> centroids, labels = kmeans_1d(torch.tensor([[1.0, 2.0], [10.0, 11.0]]), k=2, init="density")
    >>> centroids.tolist(), labels.tolist()
    ([1.5, 10.5], [0, 0, 1, 1])
    """
    result = fit_kmeans_1d(values, k, init=init, max_iter=max_iter, seed=seed)
    return result.centroids, result.labels


def fit_kmeans_1d(
    values: ArrayLike,
    k: int,
    init: Init | str = Init.LINEAR,
    max_iter: int = 20,
    seed: int = 0,
) -> KMeansResult:
    """:func:`kmeans_1d`, also reporting the iteration count and whether Lloyd converged.

    >>> result = fit_kmeans_1d([0.0, 0.1, 0.9, 1.0], k=2)
    >>> result.n_iter, result.converged
    (1, True)
    """
    flat = _as_flat_float32(values, "values")
    init = _parse_init(init)
    _check_k(k, flat.size)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise SqueezeError(f"max_iter={max_iter!r} must be an int >= 1")
    _check_seed(seed)
    data = np.sort(flat)
    _check_finite_sorted(data, flat, values)
    centroids = _initial_from_sorted(data, int(k), init, int(seed))
    centroids, n_iter, converged = _lloyd_sorted(data, _anchored_prefix(data), centroids, int(max_iter))
    return KMeansResult(centroids, _assign(flat, centroids), n_iter, converged)


def initial_centroids(values: ArrayLike, k: int, init: Init | str = Init.LINEAR, seed: int = 0) -> np.ndarray:
    """The float32 starting centroids, shape ``(k,)`` sorted ascending, that ``init`` places.

    These are exactly where :func:`kmeans_1d` starts, so another k-means implementation can
    be given the same start (as the benchmark does for scikit-learn).

    >>> initial_centroids([0.0, 1.0, 2.0, 3.0, 4.0], k=3).tolist()
    [0.0, 2.0, 4.0]
    >>> initial_centroids([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], k=3, init="density").tolist()
    [1.0, 3.0, 5.0]
    """
    flat = _as_flat_float32(values, "values")
    init = _parse_init(init)
    _check_k(k, flat.size)
    _check_seed(seed)
    data = np.sort(flat)
    _check_finite_sorted(data, flat, values)
    return _initial_from_sorted(data, int(k), init, int(seed))


def quantize_to_codebook(values: ArrayLike, centroids: ArrayLike) -> np.ndarray:
    """The index of the nearest centroid for each value (any shape, flattened), as int64 ``(n,)``.

    ``centroids`` need not be sorted. A value exactly between two centroids goes to the smaller
    one; among equal centroids, to the first. Values are compared at float32 precision, like
    :func:`kmeans_1d`, whose labels this reproduces for its own centroids. Empty ``values``
    give an empty result.

    >>> quantize_to_codebook([0.2, -3.0, 0.8, 5.0], [1.0, 0.0]).tolist()
    [1, 1, 0, 0]
    """
    flat = _as_flat_float32(values, "values")
    codebook = _as_flat_float32(centroids, "centroids")
    if codebook.size == 0:
        raise SqueezeError("centroids is empty; expected at least one centroid")
    _check_finite(codebook, "centroids", centroids)
    _check_finite(flat, "values", values)
    if codebook.size == 1 or flat.size == 0:
        return np.zeros(flat.size, dtype=np.int64)
    if np.all(codebook[:-1] <= codebook[1:]):
        return _assign(flat, codebook)
    order = np.argsort(codebook, kind="stable")
    return order[_assign(flat, codebook[order])]


# --- validation ------------------------------------------------------------------------------


def _as_flat_float32(values: object, name: str) -> np.ndarray:
    """``values`` as a contiguous 1-D float32 array (no copy when it already is one)."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach().cpu().reshape(-1)
        if tensor.is_complex():
            raise SqueezeError(f"{name} must hold real numbers, got a tensor of dtype {tensor.dtype}")
        values = tensor.to(torch.float32).numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise SqueezeError(f"{name} must hold real numbers, got an array of dtype {array.dtype}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, reported below
        return np.ascontiguousarray(array.reshape(-1), dtype=np.float32)


def _parse_init(init: Init | str) -> Init:
    try:
        return Init(init)
    except ValueError:
        raise SqueezeError(f"init={init!r} must be one of {[i.value for i in Init]}") from None


def _check_k(k: object, n: int) -> None:
    if n == 0:
        raise SqueezeError("values is empty; k-means needs at least 2 values to cluster")
    if n < 2:
        raise SqueezeError(f"values holds {n} value; k-means needs at least 2 values to cluster")
    is_int = isinstance(k, (int, np.integer)) and not isinstance(k, bool)
    if not is_int or not 2 <= k <= n:
        shown = int(k) if is_int else repr(k)
        raise SqueezeError(f"k={shown} must be an int in [2, {n}] (the number of values to cluster)")


def _check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SqueezeError(f"seed={seed!r} must be an int >= 0")


def _check_finite_sorted(data: np.ndarray, flat: np.ndarray, original: object) -> None:
    """O(1) check: after sorting, any -inf is first and any +inf or NaN is last."""
    if not (np.isfinite(data[0]) and np.isfinite(data[-1])):
        _check_finite(flat, "values", original)


def _check_finite(flat: np.ndarray, name: str, original: object) -> None:
    """Raise naming the first value of ``original`` that is not finite once in float32."""
    bad = np.flatnonzero(~np.isfinite(flat))
    if bad.size:
        i = int(bad[0])
        if isinstance(original, torch.Tensor):
            value = original.detach().reshape(-1)[i].item()
        else:
            value = np.asarray(original).reshape(-1)[i].item()
        raise SqueezeError(f"{name} must be finite float32 numbers; got {value!r} at flat index {i} ({bad.size} non-finite in all)")


# --- the algorithm ---------------------------------------------------------------------------


def _initial_from_sorted(data: np.ndarray, k: int, init: Init, seed: int) -> np.ndarray:
    """Starting centroids (float32, sorted) for sorted, finite ``data`` with ``2 <= k <= n``."""
    n = data.size
    if init is Init.LINEAR:
        return np.linspace(float(data[0]), float(data[-1]), k).astype(np.float32)
    if init is Init.DENSITY:
        return data[(2 * np.arange(k, dtype=np.int64) + 1) * n // (2 * k)].copy()
    return _forgy(data, k, np.random.default_rng(seed))


def _forgy(data: np.ndarray, k: int, rng: np.random.Generator, rounds: int = 8) -> np.ndarray:
    """Draw random weights, skipping values already drawn, until ``k`` distinct values are in.

    Batches of draws do this in ``O(k)`` when most values are distinct. If rare values leave it
    short after ``rounds`` batches (say, mostly pruned zeros), it finishes with the same
    distribution in one pass over the distinct values: those not yet drawn race with arrival
    times ``Exponential(1) / count``, and the first to arrive are taken.
    """
    n = data.size
    drawn = np.empty(0, dtype=np.float32)
    for _ in range(rounds):
        need = k - drawn.size
        if need == 0:
            return np.sort(drawn)
        candidates = np.concatenate([drawn, data[rng.integers(0, n, size=2 * need + 8)]])
        _, first = np.unique(candidates, return_index=True)
        drawn = candidates[np.sort(first)][:k]
    is_first = np.empty(n, dtype=bool)
    is_first[0] = True
    np.not_equal(data[1:], data[:-1], out=is_first[1:])
    starts = np.flatnonzero(is_first)
    if starts.size < k:  # too few distinct values: all of them, the largest repeated
        return np.concatenate([data[starts], np.full(k - starts.size, data[-1], dtype=np.float32)])
    need = k - drawn.size
    if need == 0:
        return np.sort(drawn)
    counts = np.diff(np.append(starts, n))
    arrival = rng.exponential(size=starts.size) / counts
    arrival[np.isin(data[starts], drawn)] = np.inf
    picks = starts[np.argpartition(arrival, need - 1)[:need]]
    return np.sort(np.concatenate([drawn, data[picks]]))


def _midpoints(centroids: np.ndarray) -> np.ndarray:
    """float32 ``m`` with ``x <= m[j]`` iff ``x <= (c[j] + c[j+1]) / 2`` for every float32 ``x``.

    The midpoint is computed in float64 and rounded *down* to float32, so comparing float32
    values against it is exact and needs no float64 copy of the data.
    """
    c = centroids.astype(np.float64)
    exact = 0.5 * (c[:-1] + c[1:])
    mids = exact.astype(np.float32)
    above = mids.astype(np.float64) > exact
    mids[above] = np.nextafter(mids[above], np.float32(-np.inf))
    return mids


def _boundaries(data: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cluster ``j`` is ``data[b[j]:b[j+1]]``; values on a midpoint go to the lower cluster."""
    bounds = np.empty(centroids.size + 1, dtype=np.int64)
    bounds[0], bounds[-1] = 0, data.size
    bounds[1:-1] = np.searchsorted(data, _midpoints(centroids), side="right")
    return bounds


def _anchored_prefix(data: np.ndarray) -> np.ndarray:
    """float64 ``p`` of size ``n + 1`` with ``sum(data[a:b]) == p[b] - p[a]``, anchored at zero.

    The running sums start at ``z``, the first value >= 0, and run outward both ways:
    ``p[i] = sum(data[z:i])`` for ``i >= z`` and ``-sum(data[i:z])`` below. A cluster's sum thus
    never comes from two huge partial sums built from values of the other sign; a one-sided
    cluster's mean has relative error within about ``n * 2**-53``, far below float32's
    resolution (a plain prefix sum loses tiny clusters beside large ones: ``[-1, 1e-33]``).
    """
    z = int(np.searchsorted(data, np.float32(0.0), side="left"))
    prefix = np.empty(data.size + 1, dtype=np.float64)
    prefix[z] = 0.0
    np.cumsum(data[z:], dtype=np.float64, out=prefix[z + 1 :])
    if z:
        below = prefix[z - 1 :: -1]  # prefix[z-1], ..., prefix[0]
        np.cumsum(data[z - 1 :: -1], dtype=np.float64, out=below)
        np.negative(prefix[:z], out=prefix[:z])
    return prefix


def _lloyd_sorted(data: np.ndarray, prefix: np.ndarray, centroids: np.ndarray, max_iter: int) -> tuple[np.ndarray, int, bool]:
    """Lloyd's iterations on sorted ``data``, cluster sums from :func:`_anchored_prefix`."""
    bounds = _boundaries(data, centroids)
    for n_iter in range(1, max_iter + 1):
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        filled = counts > 0
        updated = centroids.copy()  # empty clusters keep their previous centroid
        updated[filled] = sums[filled] / counts[filled]
        # Each mean lies inside its interval, so the order holds; sorting guards against the
        # last-bit rounding of the prefix sums.
        centroids = np.sort(updated)
        new_bounds = _boundaries(data, centroids)
        if np.array_equal(new_bounds, bounds):
            return centroids, n_iter, True
        bounds = new_bounds
    return centroids, max_iter, False


def _assign(flat: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest-centroid labels (int64) for float32 ``flat``, given sorted float32 ``centroids``.

    A binary search of each value among the midpoints; torch's runs on all cores, about twice
    as fast as numpy's here.
    """
    if not flat.flags.writeable:  # torch.from_numpy warns on read-only arrays
        flat = flat.copy()
    mids = torch.from_numpy(_midpoints(centroids))
    return torch.searchsorted(mids, torch.from_numpy(flat), right=False).numpy()
