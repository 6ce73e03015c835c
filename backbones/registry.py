"""One registry implementation, shared by backbones and heads.

A registry maps a name to a builder function. Building validates the keyword arguments against the builder's
signature before calling it, so a typo (``ouput_stride=8``) fails with the list of accepted keywords instead of
being swallowed by ``**kwargs`` or surfacing as an obscure ``TypeError`` deep inside a constructor.

Names of the form ``"<prefix>:<rest>"`` are routed to a prefix handler (``"timm:resnet50"``), which lets a
registry expose open-ended families without listing every member.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

__all__ = ["UsageError", "MissingExtraError", "require_extra", "Registry", "check_kwargs", "BACKBONES",
           "register_backbone", "build_backbone", "list_backbones"]

F = TypeVar("F", bound=Callable[..., Any])


class UsageError(TypeError):
    """A caller's mistake detected on purpose (an unknown keyword, an argument of the wrong kind).

    The message names the bad value and the accepted ones. It is a ``TypeError``, so ``except TypeError`` still
    catches it; the command-line programs report it in one line, while any other ``TypeError`` (a bug) keeps
    its traceback.
    """


class MissingExtraError(ImportError):
    """An optional dependency (an extra of the package) is not installed; the message names the ``pip install``
    that brings it."""


def require_extra(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming it and the extra that installs it.

    Example::

        transformers = require_extra("transformers", extra="hf", purpose="heads.hf")
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{purpose} needs the {module} package ({err}); install it with pip install "
            f"\"dense-backbones[{extra}]\" (in a checkout: pip install -e \".[{extra}]\")"
        ) from None


class Registry:
    """A name -> builder mapping with strict keyword checking.

    Args:
        kind: what the registry holds, used in error messages ("backbone", "head").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: Dict[str, Callable[..., Any]] = {}
        self._prefixes: Dict[str, Callable[..., Any]] = {}

    def register(self, name: Optional[str] = None) -> Callable[[F], F]:
        """Decorator registering ``fn`` under ``name`` (default: the function's name)."""

        def decorator(fn: F) -> F:
            key = fn.__name__ if name is None else name
            if not isinstance(key, str) or not key or ":" in key:
                raise ValueError(f"{self.kind} name must be a non-empty string without ':', got {key!r}")
            if key in self._builders:
                raise ValueError(
                    f"{self.kind} {key!r} is already registered (by {self._builders[key].__module__}."
                    f"{self._builders[key].__qualname__}); pick another name"
                )
            self._builders[key] = fn
            return fn

        return decorator

    def register_prefix(self, prefix: str, handler: Callable[..., Any]) -> None:
        """Route every name ``"<prefix>:<rest>"`` to ``handler(rest, **kwargs)``."""
        if prefix in self._prefixes:
            raise ValueError(f"{self.kind} prefix {prefix!r} is already registered")
        self._prefixes[prefix] = handler

    def list(self, pattern: str = "*") -> List[str]:
        """Sorted registered names matching the shell-style ``pattern``."""
        return sorted(n for n in self._builders if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def get(self, name: str) -> Callable[..., Any]:
        """The builder registered under ``name``; unknown names raise with close matches."""
        if not isinstance(name, str):
            raise UsageError(f"{self.kind} name must be a string, got {type(name).__name__}")
        if name in self._builders:
            return self._builders[name]
        close = difflib.get_close_matches(name, list(self._builders), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        prefixes = "".join(f", or '{p}:<name>'" for p in sorted(self._prefixes))
        raise ValueError(
            f"unknown {self.kind} {name!r}.{hint} Registered: {', '.join(self.list()) or '(none)'}{prefixes}."
        )

    def build(self, name: str, **kwargs: Any) -> Any:
        """Build ``name`` with ``kwargs``, rejecting keywords the builder does not accept."""
        if isinstance(name, str) and ":" in name:
            prefix, rest = name.split(":", 1)
            if prefix not in self._prefixes:
                raise ValueError(
                    f"unknown {self.kind} prefix {prefix!r} in {name!r}; accepted prefixes: "
                    f"{', '.join(sorted(self._prefixes)) or '(none)'}"
                )
            return self._prefixes[prefix](rest, **kwargs)
        fn = self.get(name)
        check_kwargs(fn, kwargs, what=f"{self.kind} {name!r}")
        return fn(**kwargs)


def check_kwargs(fn: Callable[..., Any], kwargs: Dict[str, Any], *, what: str, keyword_only: bool = False,
                 extra: Sequence[str] = ()) -> None:
    """Raise :class:`UsageError` naming any keyword in ``kwargs`` that ``fn`` does not accept.

    Args:
        keyword_only: accept only ``fn``'s keyword-only parameters (for classes whose positional parameters
            the caller fills itself).
        extra: further accepted names, listed in the message too.
    """
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    kinds = (inspect.Parameter.KEYWORD_ONLY,) if keyword_only else (
        inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    accepted = [n for n, p in params.items() if p.kind in kinds and n != "self"] + list(extra)
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, accepted, n=1, cutoff=0.6)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UsageError(
            f"{what} got unexpected keyword argument(s) {', '.join(hints)}; accepted: {', '.join(accepted)}"
        )


BACKBONES = Registry("backbone")


def register_backbone(name: Optional[str] = None) -> Callable[[F], F]:
    """Decorator registering a backbone builder: the plug-in point for third-party backbones.

    The builder takes keyword arguments only and returns a :class:`backbones.Backbone`; check it with
    :func:`backbones.testing.check_backbone`.

    Example::

        @register_backbone("my_net")
        def my_net(*, out_strides=(8, 16, 32)) -> Backbone: ...
    """
    return BACKBONES.register(name)


def build_backbone(name: str, **kwargs: Any) -> Any:
    """Build the backbone registered as ``name`` (or ``"timm:<model>"`` / ``"torchvision:<model>"``).

    Example::

        bb = build_backbone("resnet18", out_strides=(8, 16, 32))
        f8, f16, f32 = bb(images)  # (N, 128, H/8, W/8), (N, 256, H/16, W/16), (N, 512, H/32, W/32)
    """
    return BACKBONES.build(name, **kwargs)


def list_backbones(pattern: str = "*") -> List[str]:
    """Registered backbone names matching the shell-style ``pattern`` (e.g. ``"resnet*"``)."""
    return BACKBONES.list(pattern)
