"""Decomposition: replace a layer by cheaper factors fitted to it, so the decoded model computes less.

* :mod:`.lowrank` -- a Linear as two of rank r; a convolution split along its channels (k x k to r, then 1 x 1);
* :mod:`.separable` -- depthwise-separable (depthwise k x k, then pointwise) and asymmetric (k x 1, then 1 x k) factorisations;
* :mod:`.pooling` -- global average pooling in place of a large fully connected layer;
* :mod:`._plan` -- ranks per layer for a MACs target;
* :mod:`.stage` -- the ``decompose`` stage (:class:`DecomposeConfig`).
"""

from squeezetune.compression.decomposition.stage import Allocation, DecomposeConfig, LayerDecomposition, Method

__all__ = ["Allocation", "DecomposeConfig", "LayerDecomposition", "Method"]
