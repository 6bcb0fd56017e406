"""Structured pruning: remove whole channels so the network really gets smaller and faster.

* :mod:`.shrink` -- channel groups (through DepGraph, :mod:`._graph`), shrinking, the shrunk-model spec;
* :mod:`.filters` -- L1 filter pruning and per-layer sensitivity (Li et al. 2017);
* :mod:`.channel` -- LASSO channel selection with least-squares reconstruction (He et al. 2017);
* :mod:`._plan` -- per-layer channel counts for a MACs target.
"""
