"""Optional dependencies: a missing extra raises an ImportError naming the install command."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise an ImportError telling how to install the ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is needed for this feature but is not installed; "
            f"install it with: pip install 'kd-reranker[{extra}]'"
        ) from exc
