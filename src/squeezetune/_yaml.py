"""Reading the YAML files users hand us (recipes, search configs): one-line errors, mappings only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from squeezetune.errors import SqueezeError


def load_mapping(path: Path, what: str) -> Mapping[str, Any]:
    """The mapping in YAML file ``path`` (``{}`` for an empty file); ``what`` names it in errors."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
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
