"""`ts.handler_utils.utils`: where TorchServe 0.10+ exports its streaming helper, and
`import_class`."""

import importlib

from ts.protocol.otf_message_handler import send_intermediate_predict_response

__all__ = ["import_class", "send_intermediate_predict_response"]


def import_class(class_name: str, module_prefix=None):
    """The class named `module.Class` (or `Class` of `module_prefix`, or of
    `module_prefix.module`)."""
    if not class_name:
        raise ImportError("class name is not defined")
    module_name, _, class_name = class_name.rpartition(".")
    if module_prefix:
        module_name = f"{module_prefix}.{module_name}" if module_name else module_prefix
    elif not module_name:
        raise ImportError("module name is not defined.")
    found = getattr(importlib.import_module(module_name), class_name, None)
    if found is None:
        raise ImportError(f"class:{class_name} not found in module:{module_name}.")
    return found
