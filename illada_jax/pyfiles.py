"""Loading a user's Python file as a module: recipes (`config:path.py:function`) and reward
functions (`path.py:function`) are found this way."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from collections.abc import Callable


def load_module_file(path: pathlib.Path, module_name: str,
                     fail: Callable[[Exception], Exception]):  # fmt: skip
    """Import `path` as module `module_name` (registered in `sys.modules`: dataclasses and
    pickling look modules up by name). When the file raises on import it is unregistered and
    `fail(error)` is raised from the error."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise fail(error) from error
    return module
