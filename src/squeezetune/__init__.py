"""squeezetune: make trained PyTorch models small and fast, and search for the best way to do it."""

from __future__ import annotations

from squeezetune.errors import SqueezeError

__version__ = "0.1.0"
__all__ = ["SqueezeError", "__version__"]
