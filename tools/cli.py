"""The command-line wrapper shared by the tools: a user's mistake prints one message, not a traceback."""

from __future__ import annotations

import sys
from typing import Any, Callable, List, Optional

__all__ = ["USER_ERRORS", "run_cli"]

# Errors that mean "fix your input" (a bad flag, file, dataset or checkpoint), or a diverged run.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FloatingPointError, ConnectionError)


def run_cli(run: Callable[[Optional[List[str]]], Any], argv: Optional[List[str]] = None) -> None:
    """Call ``run(argv)``; on a user error print ``error: <message>`` to stderr and exit with status 1."""
    try:
        run(argv)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
