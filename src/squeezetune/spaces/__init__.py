"""Search spaces: the knobs of a model's compression, derived from the model itself.

``derive_space(model, config)`` gives every prunable layer a prune count and a cluster count and
adds the recipe-level knobs; the user's YAML fixes, narrows or excludes any of them.
:class:`Constraints` states limits (bytes, accuracy drop, MACs) that are kept apart from the
objectives. This package only describes knobs: it imports neither Ray nor MLflow, and runs nothing.
"""

from squeezetune.spaces.constraints import Constraints
from squeezetune.spaces.knobs import Choice, Fixed, FloatRange, IntRange, Knob, parse_domain
from squeezetune.spaces.space import Space, derive_space

__all__ = [
    "Choice",
    "Constraints",
    "Fixed",
    "FloatRange",
    "IntRange",
    "Knob",
    "Space",
    "derive_space",
    "parse_domain",
]
