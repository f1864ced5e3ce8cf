"""User-facing errors.

A `UserError` is a mistake the user can fix (missing file, bad row, bad parameter). The CLI
prints its message as one line on stderr and exits with code 2, with no traceback. Anything
else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input, described in one line that says where and how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
