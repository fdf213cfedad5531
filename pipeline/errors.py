"""The exception type that reaches a user as a one-line message (and its one special case)."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2.

    The message names the value that was given, what is accepted and what to
    do about it. It never carries a traceback.
    """

    exit_code = 2


class DoesNotFit(UserError):
    """A model too large for a board with an engine: one model of a run may not fit where others do."""


def run_script(main: Callable[[], int]) -> None:
    """Runs a script's main and exits with its code; a UserError becomes one line and exit 2."""
    try:
        code = main()
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        code = exc.exit_code
    raise SystemExit(code)


def ensure_directory(path: Path, flag: str) -> Path:
    """Makes ``path`` (and its parents) a writable directory; UserError naming ``flag`` otherwise."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a file: give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{flag} {str(path)!r} cannot be written ({exc.strerror or exc}): "
                        "give a directory you can write to") from None
    return path
