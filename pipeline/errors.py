"""The one exception type that reaches a user as a one-line message."""
from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2.

    The message names the value that was given, what is accepted and what to
    do about it. It never carries a traceback.
    """

    exit_code = 2


def run_script(main: Callable[[], int]) -> None:
    """Runs a script's main and exits with its code; a UserError becomes one line and exit 2."""
    try:
        code = main()
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        code = exc.exit_code
    raise SystemExit(code)
