"""The user's own Python named on the command line: ``package.module:function`` or ``path/to/file.py:function``.

One loader for every flag that takes code (``--reward_funcs``, RAFT's ``--clean_text`` / ``--discard_sample``), so
each says the same thing the same way: every failure before any model loads (bad spec, module or file that does not
import, missing attribute, not callable) is a one-line ``UserError`` naming the flag and the spec.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhf_lab.errors import UserError


def load_function(spec: str, flag: str) -> Callable[..., Any]:
    """The callable ``spec`` names. A target ending in ``.py`` or holding a path separator is a file, loaded under
    a private module name (registered in ``sys.modules``, so its dataclasses and pickles work); anything else is
    imported as a module."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise UserError(f"--{flag}: {spec!r} is not of the form module:function (or path/to/file.py:function)")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise UserError(f"--{flag}: {spec!r}: no such file {path}")
        name = f"_rlhf_lab_user_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise UserError(f"--{flag}: {spec!r}: {path} cannot be loaded as a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:  # the user's file: any error in it is theirs to fix, in one line
            sys.modules.pop(name, None)
            raise UserError(f"--{flag}: {spec!r}: importing {path} failed: {_words(e)}") from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:  # ImportError, or whatever the module raised while importing
            raise UserError(f"--{flag}: {spec!r}: cannot import module {target!r}: {_words(e)}") from None
    function = getattr(module, attr, None)
    if function is None:
        raise UserError(f"--{flag}: {spec!r}: {target!r} has no {attr!r}")
    if not callable(function):
        raise UserError(f"--{flag}: {spec!r}: {attr!r} is not callable")
    return function


def _words(e: BaseException) -> str:
    """``Type: first line of the message`` — the rest of a multi-line error would break the one-line rule."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
