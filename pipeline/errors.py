"""The one exception type that reaches a user as a one-line message."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2.

    The message names the value that was given, what is accepted and what to
    do about it. It never carries a traceback.
    """

    exit_code = 2
