"""`ts.utils.util`: helpers TorchServe handlers import."""

import inspect
import json
import os


class PredictionException(Exception):
    """A handler error with the HTTP status the client should get."""

    def __init__(self, message, error_code=500):
        self.message = message
        self.error_code = error_code
        super().__init__(message)

    def __str__(self):
        return f"{self.message} : {self.error_code}"


def list_classes_from_module(module, parent_class=None):
    """Classes defined in `module` itself, optionally only subclasses of `parent_class`."""
    classes = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__
    ]
    if parent_class is not None:
        classes = [cls for cls in classes if issubclass(cls, parent_class)]
    return classes


def load_label_mapping(mapping_file_path):
    """Reads an index → name JSON file; a list value keeps its last element."""
    if not os.path.isfile(mapping_file_path):
        return None
    with open(mapping_file_path) as f:
        mapping = json.load(f)
    if not isinstance(mapping, dict):
        raise ValueError("index -> name mapping file must be a JSON object")
    for key, value in mapping.items():
        if isinstance(value, list):
            value = value[-1]
        if not isinstance(value, str):
            raise ValueError(f"mapping value of {key!r} must be a string or a list of strings")
        mapping[key] = value
    return mapping


def map_class_to_label(probs, mapping=None, lbl_classes=None):
    """Per request, a dict of class label (or index as str) → probability."""
    if not isinstance(probs, list):
        raise TypeError("probs must be a list")
    if lbl_classes is None:
        lbl_classes = [list(range(len(row))) for row in probs]
    if mapping is not None:
        lbl_classes = [[mapping[str(c)] for c in row] for row in lbl_classes]
    return [
        {(c if isinstance(c, str) else str(c)): p for c, p in zip(classes, row)}
        for classes, row in zip(lbl_classes, probs)
    ]
