"""What every command-line program shares: the error wrapper and one list syntax for list-valued flags."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, List, Optional, Sequence

from backbones.registry import UsageError

__all__ = ["USER_ERRORS", "MissingExtra", "ListOf", "add_list_argument", "run_cli"]


class MissingExtra(RuntimeError):
    """An optional dependency is not installed; the message names the ``pip install`` that brings it."""


# Errors that mean "fix your input" (a bad flag, file, dataset or checkpoint), "fix your machine" (OSError: a
# full disk, a path that is a file; its message names the path), or a diverged run. A TypeError is one only
# when raised on purpose (UsageError): any other is a bug, and its traceback is what a report needs.
USER_ERRORS = (ValueError, UsageError, OSError, FloatingPointError, MissingExtra)


def run_cli(run: Callable[[Optional[List[str]]], Any], argv: Optional[List[str]] = None) -> int:
    """Call ``run(argv)``; on a user error print ``error: <message>`` to stderr and exit with status 1.

    Returns ``run``'s result when it is an exit status (an ``int``), else 0.
    """
    try:
        result = run(argv)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


class ListOf:
    """argparse ``type`` for one token of a list flag: ``"0.75,1.0"`` -> ``[0.75, 1.0]``, ``"8"`` -> ``[8]``.

    A YAML config passes numbers and strings as they are; each comma-separated item is converted by ``kind``.
    """

    def __init__(self, kind: Callable[[str], Any]) -> None:
        self.kind = kind

    def __call__(self, token: Any) -> List[Any]:
        if not isinstance(token, str):
            return [self._one(token)]
        items = [t.strip() for t in token.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"empty item in list {token!r}")
        return [self._one(t) for t in items]

    def _one(self, item: Any) -> Any:
        if self.kind in (int, float) and isinstance(item, bool):
            raise argparse.ArgumentTypeError(f"expected a number, got {item!r}")
        try:
            value = self.kind(item)
        except (TypeError, ValueError):
            what = {int: "an integer", float: "a number"}.get(self.kind, "a value")
            raise argparse.ArgumentTypeError(f"expected {what}, got {item!r}") from None
        if self.kind is int and isinstance(item, float) and value != item:
            raise argparse.ArgumentTypeError(f"expected an integer, got {item!r}")
        return value

    def __repr__(self) -> str:  # argparse names the type in its messages
        return getattr(self.kind, "__name__", "value")


class _ListAction(argparse.Action):
    """Flattens ``nargs="+"`` tokens of :class:`ListOf` lists and checks the length and choices."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, length: Optional[Sequence[int]] = None,
                 item_choices: Optional[Sequence[Any]] = None, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.length = tuple(length) if length is not None else None
        self.item_choices = tuple(item_choices) if item_choices is not None else None

    def check(self, values: List[Any], flag: str) -> List[Any]:
        """``values`` checked against the flag's accepted lengths and choices; raises ``ValueError``."""
        if not values:
            raise ValueError(f"{flag}: expected at least one value, got an empty list")
        if self.length is not None and len(values) not in self.length:
            counts = " or ".join(map(str, self.length))
            raise ValueError(f"{flag} takes {counts} values, got {len(values)}: {values}")
        if self.item_choices is not None:
            bad = [v for v in values if v not in self.item_choices]
            if bad:
                raise ValueError(f"{flag}: {', '.join(map(repr, bad))} not among "
                                 f"{', '.join(map(str, self.item_choices))}")
        return values

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        flat = [v for token in values for v in token]
        try:
            setattr(namespace, self.dest, self.check(flat, option_string or self.dest))
        except ValueError as e:
            parser.error(str(e))


def add_list_argument(parser: Any, *flags: str, kind: Callable[[str], Any] = str,
                      length: Optional[Sequence[int]] = None, choices: Optional[Sequence[Any]] = None,
                      **kwargs: Any) -> argparse.Action:
    """A list-valued flag that takes ``--scales 0.75,1.0,1.25`` and ``--scales 0.75 1.0 1.25`` alike.

    ``length``: accepted numbers of values (e.g. ``(1, 2)`` for ``S`` or ``H W``); ``choices``: accepted items.
    """
    return parser.add_argument(*flags, nargs="+", type=ListOf(kind), action=_ListAction, length=length,
                               item_choices=choices, **kwargs)


def is_list_action(action: argparse.Action) -> bool:
    """Whether ``action`` was made by :func:`add_list_argument` (the YAML loader flattens it the same way)."""
    return isinstance(action, _ListAction)
