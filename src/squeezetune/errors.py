"""The one exception type users see.

Every error caused by bad input (an unknown task, a keep count above a layer's size, a damaged
container file, ...) is raised as :class:`SqueezeError` with a single-line message that names the
bad value and what was expected. The CLI prints that line and exits non-zero; it never shows a
traceback for a ``SqueezeError``.
"""

from __future__ import annotations


class SqueezeError(ValueError):
    """A user-facing error whose message is one line naming the bad value and what was expected."""

    exit_code: int = 2
    """The CLI's exit code for it: 2, bad input, unless a subclass says otherwise."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
