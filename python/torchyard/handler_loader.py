"""Resolving a manifest's `handler` string into the callable the worker runs per batch."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from types import ModuleType
from typing import Any, Callable, List

#: TorchServe's built-in handlers, found as `ts.torch_handler.<name>`.
BUILTIN_PACKAGE = "ts.torch_handler"

Entry = Callable[[Any, Any], Any]


class HandlerLoadError(Exception):
    """The handler string names nothing usable."""


def load_entry_point(handler: str, model_dir: str, context: Any, fresh: bool = False) -> Entry:
    """Imports and initialises the handler; returns its `entry(data, context)`.

    `model_dir` goes first on sys.path. `x.py` / `module`: the module's `handle` function if it
    has one (called once with `data=None`), else the one class the module itself defines
    (instantiated, `initialize(context)` called if it has one; its `handle` is the entry).
    `x.py:fn` / `module:fn`: that function, called once with `data=None`. A plain name no module
    answers to is looked up among TorchServe's built-in handlers (`ts.torch_handler.<name>`).
    `fresh`: a handler file is executed anew even when imported already, so that the entry
    point has module globals of its own, as in a worker of its own.
    """
    if sys.path[0] != model_dir:
        sys.path.insert(0, model_dir)
    spec, _, function = handler.partition(":")
    module = _import_handler_module(spec, model_dir, fresh)
    name = function or "handle"
    if hasattr(module, name):
        entry = getattr(module, name)
        if not callable(entry):
            raise HandlerLoadError(f"{module.__name__}.{name} is not callable")
        entry(None, context)
        return entry
    if function:
        raise HandlerLoadError(f"handler module {module.__name__} has no function {function!r}")
    return _class_entry_point(module, context)


def _import_handler_module(spec: str, model_dir: str, fresh: bool) -> ModuleType:
    if spec.endswith(".py"):
        return _import_handler_file(os.path.join(model_dir, spec), fresh)
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name != spec or "." in spec:
            raise
        builtin = f"{BUILTIN_PACKAGE}.{spec}"
        try:
            return importlib.import_module(builtin)
        except ModuleNotFoundError as builtin_exc:
            raise HandlerLoadError(
                f"handler {spec!r} is neither a module in the model directory or on the import "
                f"path nor a built-in handler ({builtin} cannot be imported: {builtin_exc})"
            ) from None


def _import_handler_file(path: str, fresh: bool) -> ModuleType:
    """Imports a handler file by its module name, its folder first on sys.path. When another
    module holds that name already (the standard library's `inspect` for an `inspect.py`, a
    workflow's `handler.py` beside a model's), the file is executed anyway and the other module
    keeps the name; `fresh` executes the file again when it was imported already."""
    if not os.path.isfile(path):
        raise HandlerLoadError(f"handler file {path} does not exist")
    folder, file_name = os.path.split(path)
    if sys.path[0] != folder:
        sys.path.insert(0, folder)
    name = file_name[:-3]
    found = sys.modules.get(name)
    other = getattr(found, "__file__", None)
    itself = other is not None and os.path.samefile(other, path)
    if found is not None and (fresh or not itself):
        del sys.modules[name]
        try:
            module = importlib.import_module(name)
        finally:
            if not itself:
                sys.modules[name] = found
    else:
        module = importlib.import_module(name)
    found = getattr(module, "__file__", None)
    if found is None or not os.path.samefile(found, path):
        raise HandlerLoadError(
            f"handler file {path} is shadowed by the module {module.__name__} already imported "
            f"from {found}; rename the handler file"
        )
    return module


def _class_entry_point(module: ModuleType, context: Any) -> Entry:
    classes = _own_classes(module)
    if len(classes) != 1:
        names = ", ".join(cls.__name__ for cls in classes) or "none"
        raise HandlerLoadError(
            f"handler module {module.__name__} has no handle function, so it must define exactly "
            f"one class; it defines {len(classes)} ({names})"
        )
    service = classes[0]()
    entry = getattr(service, "handle", None)
    if not callable(entry):
        raise HandlerLoadError(f"handler class {classes[0].__name__} has no handle method")
    initialize = getattr(service, "initialize", None)
    if callable(initialize):
        initialize(context)
    return entry


def _own_classes(module: ModuleType) -> List[type]:
    """Classes defined in `module` itself, not imported into it."""
    return [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__
    ]
