"""YAML configs whose keys are the command-line flags: argparse defaults < YAML file < explicit flags.

A config file holds ``key: value`` pairs where each key is a flag's name with ``_`` for ``-`` (``crop_size``
for ``--crop-size``). Values are converted and checked with the flag's own ``type`` and ``choices``, so a YAML
file is held to exactly the rules of the command line; an unknown key is an error naming close matches.
"""

from __future__ import annotations

import argparse
import difflib
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Set, Union

import yaml

from .cli import is_list_action

__all__ = ["parse_config", "load_config_file", "explicit_dests", "flag_defaults", "save_config", "to_plain",
           "yaml_mapping", "load_yaml"]

_SENTINEL = object()
_BOOL_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        first_line: Dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base': explicit keys may override merged ones
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = key in first_line
            except TypeError:  # an unhashable key: the base class reports it
                break
            if seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice: first at line "
                                                        f"{first_line[key]}, again", key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that raises ``yaml.YAMLError`` on a duplicate key, naming it and its line."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def yaml_mapping(text: Union[str, Mapping[str, Any], None]) -> Dict[str, Any]:
    """argparse ``type`` for a mapping given inline as YAML/JSON: ``'{num_images: 64, seed: 1}'``."""
    if text is None:
        return {}
    try:
        value = load_yaml(text) if isinstance(text, str) else text
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"not a valid YAML mapping {text!r}: {_one_line(e)}") from None
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise argparse.ArgumentTypeError(f"expected a mapping like '{{key: value}}', got {text!r}")
    return dict(value)


def _one_line(error: yaml.YAMLError) -> str:
    """The problem and its line, without PyYAML's multi-line excerpt of the text."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return " ".join(str(error).split())
    context = f"{error.context}: " if getattr(error, "context", None) else ""
    return f"{context}{error.problem} at line {mark.line + 1}, column {mark.column + 1}"


def _actions(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", argparse.SUPPRESS)}


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` from a YAML file converted and checked as argparse would a command-line string."""
    if value is None:
        return None
    if isinstance(action, _BOOL_ACTIONS):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if is_list_action(action):
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        try:
            flat = [v for item in items for v in action.type(item)]
            return action.check(flat, where)
        except (argparse.ArgumentTypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}" if not str(e).startswith(where) else str(e)) from None
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if many:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(action.nargs, int) and len(items) != action.nargs:
            raise ValueError(f"{where}: expected {action.nargs} values, got {value!r}")
        if action.nargs == "+" and not items:
            raise ValueError(f"{where}: expected at least one value, got an empty list")
        return [_convert_one(action, v, where) for v in items]
    return _convert_one(action, value, where)


def _convert_one(action: argparse.Action, value: Any, where: str) -> Any:
    kind = action.type
    if kind in (int, float):
        # YAML reads 1e-4 as a string and true as a bool; neither should pass silently as a number.
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"{where}: expected {'an integer' if kind is int else 'a number'}, got {value!r}") \
                from None
        if kind is int and isinstance(value, float) and number != value:
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        value = number
    elif kind is None or kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        value = str(value)
    else:
        try:
            value = kind(value)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(repr, action.choices))}")
    return value


def load_config_file(path: Union[str, os.PathLike], parser: argparse.ArgumentParser,
                     exclude: Iterable[str] = ("config",)) -> Dict[str, Any]:
    """Read a YAML config and return ``{dest: value}`` converted and checked against ``parser``'s flags.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a YAML mapping, an unknown key (close matches suggested), or a bad value.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {str(path)!r}")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {str(path)!r} is not a text file: byte {e.object[e.start]:#04x} at offset "
                         f"{e.start} is not UTF-8; expected a YAML file of flag names and values") from None
    except yaml.YAMLError as e:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {_one_line(e)}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of flag names to values, "
                         f"got {type(data).__name__}")
    actions = {d: a for d, a in _actions(parser).items() if d not in set(exclude)}
    out = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            close = difflib.get_close_matches(dest, list(actions), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"config file {str(path)!r}: unknown key {key!r}{hint} "
                             f"Accepted keys: {', '.join(sorted(actions))}")
        out[dest] = _convert(actions[dest], value, f"config file {str(path)!r}, key {key!r}")
    return out


def explicit_dests(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> Set[str]:
    """The destinations of the flags actually written in ``argv`` (not filled from defaults)."""
    namespace = argparse.Namespace(**{d: _SENTINEL for d in _actions(parser)})
    parsed, _ = parser.parse_known_args(argv, namespace=namespace)
    return {d for d, v in vars(parsed).items() if v is not _SENTINEL}


def parse_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None,
                 *, config_dest: str = "config") -> argparse.Namespace:
    """Parse ``argv`` with the YAML file named by ``--config`` (if any) supplying the defaults."""
    pre, _ = parser.parse_known_args(argv)
    path = getattr(pre, config_dest, None)
    if path:
        parser.set_defaults(**load_config_file(path, parser, exclude=(config_dest,)))
    return parser.parse_args(argv)


def flag_defaults(add_flags: Callable[[argparse.ArgumentParser], None]) -> Dict[str, Any]:
    """``{dest: default}`` of the flags ``add_flags`` declares (e.g. a task's model options)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_flags(parser)
    return {a.dest: a.default for a in parser._actions}


def to_plain(value: Any) -> Any:
    """``value`` with tuples as lists and paths as strings, ready for YAML/JSON."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def save_config(path: Union[str, os.PathLike], config: Mapping[str, Any]) -> None:
    """Write the resolved ``config`` as YAML: loadable again with ``--config``."""
    Path(path).write_text(yaml.safe_dump(to_plain(config), sort_keys=False))
