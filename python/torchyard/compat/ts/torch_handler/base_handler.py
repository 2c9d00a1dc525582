"""`BaseHandler`: load a TorchScript or eager model, then preprocess → inference → postprocess."""

import importlib
import logging
import os
import time
from abc import ABC

import torch

from ts.utils.util import list_classes_from_module, load_label_mapping

logger = logging.getLogger(__name__)


class BaseHandler(ABC):
    """TorchServe's default handler behaviour, for subclasses to override step by step."""

    def __init__(self):
        self.model = None
        self.mapping = None
        self.device = None
        self.initialized = False
        self.context = None
        self.manifest = None
        self.map_location = None
        self.model_pt_path = None
        self.explain = False
        self.target = 0

    def initialize(self, context):
        """Picks the device, loads the model (eager when the manifest names a model file,
        TorchScript otherwise) and the optional index_to_name.json mapping."""
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.map_location = "cuda"
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.map_location = "cpu"
            self.device = torch.device("cpu")
        self.manifest = context.manifest
        model_dir = properties.get("model_dir")
        model = self.manifest.get("model", {})
        serialized = model.get("serializedFile")
        self.model_pt_path = os.path.join(model_dir, serialized) if serialized else None
        if model.get("modelFile"):
            self.model = self._load_pickled_model(model_dir, model["modelFile"], self.model_pt_path)
            self.model.to(self.device)
        elif self.model_pt_path:
            self.model = self._load_torchscript_model(self.model_pt_path)
        else:
            raise RuntimeError("the manifest names neither a serializedFile nor a modelFile")
        self.model.eval()
        self.mapping = load_label_mapping(os.path.join(model_dir, "index_to_name.json"))
        self.initialized = True
        logger.debug("model loaded from %s on %s", self.model_pt_path, self.device)

    def _load_torchscript_model(self, model_pt_path):
        return torch.jit.load(model_pt_path, map_location=self.device)

    def _load_pickled_model(self, model_dir, model_file, model_pt_path):
        """Instantiates the one class of `model_file` and loads the state dict into it."""
        module_name = os.path.splitext(os.path.basename(model_file))[0]
        module = importlib.import_module(module_name)
        classes = list_classes_from_module(module)
        if len(classes) != 1:
            raise ValueError(
                f"Expected only one class as model definition in {model_file}, found {classes}"
            )
        model = classes[0]()
        if model_pt_path and os.path.isfile(model_pt_path):
            state_dict = torch.load(model_pt_path, map_location=self.device, weights_only=True)
            model.load_state_dict(state_dict)
        return model

    def preprocess(self, data):
        """The batch as one tensor."""
        return torch.as_tensor(data, device=self.device)

    def inference(self, data, *args, **kwargs):
        """Runs the model without autograd."""
        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    def postprocess(self, data):
        """One output per request."""
        return data.tolist()

    def _is_explain(self):
        """Whether the batch asks for explanations: the frontend sends `explain: True`."""
        if self.context is not None and self.context.get_request_header(0, "explain") == "True":
            self.explain = True
            return True
        return False

    def explain_handle(self, data_preprocess, raw_data):
        """The explanations of the first request, from `get_insights` with the request's
        input and its optional `target` (0 when absent)."""
        logger.info("Calculating Explanations")
        row = raw_data[0]
        inputs, target = row, 0
        if isinstance(row, dict):
            inputs = row.get("data") or row.get("body")
            target = row.get("target") or 0
        if isinstance(inputs, (bytes, bytearray)):
            inputs = inputs.decode("utf-8")
        self.target = target
        return self.get_insights(data_preprocess, inputs, target)

    def get_insights(self, tensor_data, raw_data, target):
        """Explanations for `tensor_data`; handlers that can explain override this."""
        raise NotImplementedError(f"{type(self).__name__} does not implement get_insights")

    def handle(self, data, context):
        """preprocess → inference → postprocess, or preprocess → explain_handle when the
        request asks for explanations; the handler time is recorded as a metric."""
        start = time.time()
        self.context = context
        data_preprocess = self.preprocess(data)
        if self._is_explain():
            output = self.explain_handle(data_preprocess, data)
        else:
            output = self.postprocess(self.inference(data_preprocess))
        context.metrics.add_time("HandlerTime", round((time.time() - start) * 1000, 2), None, "ms")
        return output
