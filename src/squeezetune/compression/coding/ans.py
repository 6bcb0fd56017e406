"""Asymmetric numeral systems (ANS) coding of i.i.d. symbol streams, through ``constriction``.

The model is a categorical distribution over *ranks* ``0..k-1`` (the used symbols, in order)
built from integer counts. Encoder and decoder build it from the very same integers, and
``constriction``'s ``perfect=False`` quantisation (to 24-bit fixed point) is a deterministic
function of them, so both sides agree bit for bit. The byte layout that stores the counts lives
in :mod:`squeezetune.compression.coding.streams`.

``constriction`` is imported inside the functions, so importing this module needs numpy alone.

Example:
    >>> import numpy as np
    >>> ranks = np.array([0, 0, 1, 0, 2, 0])
    >>> counts = np.bincount(ranks)
    >>> words = encode(ranks, counts)
    >>> decode(words, counts, len(ranks)).tolist()
    [0, 0, 1, 0, 2, 0]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from squeezetune.errors import SqueezeError

_CHUNK = 1 << 22  # symbols per call into constriction (bounds the int32 temporaries)


def _constriction():  # -> the constriction module, whose submodules are attributes, not packages
    import constriction

    return constriction


@contextlib.contextmanager
def decoding(what: str) -> Iterator[None]:
    """Turn whatever ``constriction`` raises inside the block (Rust panics too) into a one-line SqueezeError about ``what``."""
    try:
        yield
    except SqueezeError:
        raise
    except BaseException as exc:  # constriction's Rust panics arrive as pyo3 PanicException(BaseException)
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        raise SqueezeError(f"{what} does not decode: {exc}") from exc


def _model(counts: np.ndarray):  # -> constriction.stream.model.Categorical
    return _constriction().stream.model.Categorical(np.asarray(counts, dtype=np.float64), perfect=False)


def encode(ranks: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Code ``ranks`` (ints in ``[0, len(counts))``) with the model ``counts``; return uint32 words.

    ``counts`` must hold at least two positive integers; any counts work, but the payload is
    smallest when they are the ranks' own histogram.
    """
    counts = np.asarray(counts)
    if len(counts) < 2 or counts.min() < 1:
        raise SqueezeError(f"an ANS model needs >= 2 positive counts; got {counts.tolist()[:8]}")
    model = _model(counts)
    coder = _constriction().stream.stack.AnsCoder()
    n = len(ranks)
    # A stack: push the last chunk first so that decoding pops the first chunk first.
    for hi in range(n, 0, -_CHUNK):
        coder.encode_reverse(np.asarray(ranks[max(0, hi - _CHUNK) : hi], dtype=np.int32), model)
    return coder.get_compressed()


def decode(words: np.ndarray, counts: np.ndarray, n: int, values: np.ndarray | None = None) -> np.ndarray:
    """Decode ``n`` ranks coded by :func:`encode` with the same ``counts``.

    Returns ``values[rank]`` for each rank (``values`` defaults to the ranks themselves, int32).
    Raises :class:`SqueezeError` if ``words`` is not such a stream, including when words are
    left over after the ``n``-th symbol.
    """
    counts = np.asarray(counts)
    if len(counts) < 2 or counts.min() < 1:
        raise SqueezeError(f"an ANS model needs >= 2 positive counts; got {counts.tolist()[:8]}")
    values = np.arange(len(counts), dtype=np.int32) if values is None else np.asarray(values)
    out = np.empty(n, dtype=values.dtype)
    with decoding(f"ANS payload of {len(words)} words"):
        model = _model(counts)
        coder = _constriction().stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))
        for lo in range(0, n, _CHUNK):
            ranks = coder.decode(model, min(_CHUNK, n - lo))
            out[lo : lo + len(ranks)] = values[ranks]
        empty = coder.is_empty()
    if not empty:
        raise SqueezeError(f"ANS payload of {len(words)} words has data left after {n} symbols; expected it to end there")
    return out
