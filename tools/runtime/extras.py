"""The optional ``deploy`` dependencies (ONNX, ONNX Runtime, OpenVINO, NNCF): imported when first needed, and a
one-line error naming the extra to install when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..engine.cli import MissingExtra

__all__ = ["DEPLOY_EXTRA", "require"]

DEPLOY_EXTRA = 'pip install -e ".[deploy]"'


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtra` naming it and the ``deploy`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(f"{purpose} needs the {module} package ({err}); install it with {DEPLOY_EXTRA}") \
            from None
