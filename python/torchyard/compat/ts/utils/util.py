"""`ts.utils.util`: helpers TorchServe handlers import."""

import enum
import inspect
import json
import logging
import os
import re
from functools import wraps
from warnings import warn

logger = logging.getLogger(__name__)


class PT2Backend(str, enum.Enum):
    """The `torch.compile` backends TorchServe accepts in a model's `pt2` configuration."""

    EAGER = "eager"
    AOT_EAGER = "aot_eager"
    INDUCTOR = "inductor"
    NVFUSER = "nvfuser"
    AOT_NVFUSER = "aot_nvfuser"
    AOT_CUDAGRAPHS = "aot_cudagraphs"
    OFI = "ofi"
    FX2TRT = "fx2trt"
    ONNXRT = "onnxrt"
    IPEX = "ipex"
    TORCHXLA_TRACE_ONCE = "torchxla_trace_once"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"
    HPU_BACKEND = "hpu_backend"


#: HTML tags and character entities, which the text handlers strip.
CLEANUP_REGEX = re.compile("<.*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")


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


def check_valid_pt2_backend(backend: str) -> bool:
    """Whether `backend` is one of PT2Backend's; an unknown one is logged."""
    if backend in {member.value for member in PT2Backend}:
        return True
    logger.warning("%s is not a supported backend", backend)
    return False


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


def get_yaml_config(yaml_file_path):
    """The YAML file's content (a model's configuration file)."""
    import yaml

    with open(yaml_file_path) as file:
        return yaml.safe_load(file)


def deprecated(version, replacement="", klass=PendingDeprecationWarning):
    """Marks a function as going away in `version`: each call warns with `klass`."""

    def deprecator(func):
        @wraps(func)
        def wrapper(*args, **kwargs):
            warn(f"{func.__name__} is deprecated in {version} and moved to {replacement}",
                 klass, stacklevel=2)
            return func(*args, **kwargs)

        return wrapper

    return deprecator
