"""Resolving a manifest's `handler` string into the function the worker calls per batch."""

import importlib
import inspect
import sys

#: Handler names TorchServe ships, mapped to modules of the `ts` package.
BUILTIN_HANDLERS = ("image_classifier", "image_segmenter", "object_detector", "text_classifier")


def _module_name(spec: str) -> str:
    if spec in BUILTIN_HANDLERS:
        return f"ts.torch_handler.{spec}"
    if spec.endswith(".py"):
        spec = spec[:-3]
    return spec.replace("/", ".")


def load_entry_point(handler: str, model_dir: str, context):
    """Imports the handler and initialises it; returns `entry(data, context)`.

    `file.py` / `module`: the module's `handle` function if it has one, else the one class the
    module defines (instantiated, `initialize(context)` called, its `handle` used).
    `file.py:fn` / `module:fn`: that function. Function entry points are called once with
    `data=None` at load, as TorchServe does.
    """
    if model_dir not in sys.path:
        sys.path.insert(0, model_dir)
    module_spec, _, function = handler.partition(":")
    module = importlib.import_module(_module_name(module_spec))
    name = function or "handle"
    if hasattr(module, name):
        entry = getattr(module, name)
        if not callable(entry):
            raise TypeError(f"{handler}: {name} is not callable")
        entry(None, context)
        return entry
    if function:
        raise AttributeError(f"handler module {module.__name__} has no function {function!r}")
    classes = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__
    ]
    if len(classes) != 1:
        raise ValueError(
            f"handler module {module.__name__} must define a handle function or exactly one "
            f"class, found {len(classes)} classes"
        )
    service = classes[0]()
    initialize = getattr(service, "initialize", None)
    if callable(initialize):
        initialize(context)
    return service.handle
