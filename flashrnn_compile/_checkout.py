"""Running from a checkout that was not installed (PYTHONPATH=., `python -m` in the repo root, or
an install whose editable finder does not map package_dir): `passes/` and `csrc/` sit beside the
package and are found here as flashrnn_compile.passes / flashrnn_compile.csrc, and the backend is
registered by name. An installed package needs none of it: its own finders and entry point win.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MAPPED = {"flashrnn_compile.passes": "passes", "flashrnn_compile.csrc": "csrc"}


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Consulted after every other finder, so only when the installed mapping is missing."""

    def find_spec(self, name, path=None, target=None):
        folder = _MAPPED.get(name)
        init = os.path.join(_ROOT, folder or "", "__init__.py")
        if folder is None or not os.path.isfile(init):
            return None
        return importlib.util.spec_from_file_location(
            name, init, submodule_search_locations=[os.path.join(_ROOT, folder)]
        )


def install() -> None:
    if not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.append(_CheckoutFinder())


def register_backend_if_not_installed(backend) -> None:
    """Without the entry point (not installed), `backend="flashrnn"` works once we are imported."""
    if importlib.metadata.entry_points(group="torch_dynamo_backends", name="flashrnn"):
        return  # torch loads it through the entry point
    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

    if "flashrnn" not in _COMPILER_FNS:
        register_backend(backend, name="flashrnn")
