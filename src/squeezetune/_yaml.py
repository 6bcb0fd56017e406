"""Reading the YAML files users hand us (recipes, search configs): one-line errors, mappings only.

Numbers are read as YAML 1.2 reads them. PyYAML follows YAML 1.1, whose float pattern needs a dot,
so ``lr: 1e-3`` or ``weight_decay: 5e-4`` would arrive as the strings ``'1e-3'`` and ``'5e-4'``;
:class:`Loader` reads them (and ``1E5``, ``-2.5e+3``) as floats. Every YAML file squeezetune reads
goes through :func:`load_mapping` (or :func:`loads`), so recipes and configs agree.

>>> loads("lr: 1e-3\\nweight_decay: 5e-4\\nkeep: 100\\nname: 1e3x")
{'lr': 0.001, 'weight_decay': 0.0005, 'keep': 100, 'name': '1e3x'}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from squeezetune.errors import SqueezeError

_FLOAT_TAG = "tag:yaml.org,2002:float"
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
"""Floats with an exponent and no dot (``1e-3``), which YAML 1.1's pattern leaves as strings."""


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads exponent floats without a dot (``1e-3``) as floats."""


Loader.add_implicit_resolver(_FLOAT_TAG, _EXPONENT_FLOAT, list("-+0123456789."))


def loads(text: str) -> Any:
    """Parse YAML ``text`` with :class:`Loader` (safe: plain data only)."""
    return yaml.load(text, Loader=Loader)  # noqa: S506 - Loader is a SafeLoader


def load_mapping(path: Path, what: str) -> Mapping[str, Any]:
    """The mapping in YAML file ``path`` (``{}`` for an empty file); ``what`` names it in errors."""
    try:
        data = loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SqueezeError(f"{what} {str(path)!r} is not UTF-8 text: expected a YAML file") from None
    except OSError as exc:
        raise SqueezeError(f"{what} {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SqueezeError(f"{what} {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SqueezeError(f"{what} {str(path)!r} holds a {type(data).__name__}: expected a mapping")
    return data
