"""`BaseHandler`: load a TorchScript, eager, ONNX or AOT-exported model, optionally compile it
with `torch.compile`, then preprocess → inference → postprocess."""

import importlib
import logging
import os
import time
from abc import ABC

import torch

from ts.handler_utils.timer import timed
from ts.utils.util import check_valid_pt2_backend, list_classes_from_module, load_label_mapping

logger = logging.getLogger(__name__)

#: Where the profiler's traces go, in a folder named for the model (TorchServe's path).
PROFILER_OUTPUT = "/tmp/pytorch_profiler"


def _compile_options(pt2):
    """The `torch.compile` keyword arguments of a model's `pt2` configuration, or None when it
    asks for no compilation (or names a backend TorchServe does not know)."""
    if isinstance(pt2, dict) and "compile" in pt2:
        options = dict(pt2["compile"] or {})
        if not options.pop("enable", False):
            return None
    elif isinstance(pt2, dict) and "export" in pt2:
        return None
    elif isinstance(pt2, str):
        options = {"backend": pt2}
    elif isinstance(pt2, dict):
        options = dict(pt2)
        logger.warning("pt2 options outside `pt2: compile:` are deprecated; TorchServe's "
                       "standard is `pt2: {compile: {enable: true, ...}}`")
    else:
        raise ValueError("pt2 should be str or dict")
    if "backend" in options and not check_valid_pt2_backend(options["backend"]):
        return None
    return options


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
        self.profiler_args = {}

    def initialize(self, context):
        """Picks the device, loads the model (eager when the manifest names a model file;
        ONNX for `.onnx`, an AOT-compiled export for `.so` with `pt2: export: aot_compile`,
        TorchScript otherwise), compiles it as the model's `pt2` configuration asks and loads
        the optional index_to_name.json mapping."""
        if context is not None and hasattr(context, "model_yaml_config"):
            self.model_yaml_config = context.model_yaml_config
        properties = context.system_properties
        self._select_device(properties.get("gpu_id"))
        self.manifest = context.manifest
        model_dir = properties.get("model_dir")
        model = self.manifest.get("model", {})
        serialized = model.get("serializedFile")
        self.model_pt_path = os.path.join(model_dir, serialized) if serialized else None
        if model.get("modelFile"):
            self.model = self._load_pickled_model(model_dir, model["modelFile"], self.model_pt_path)
            self.model.to(self.device)
            self.model.eval()
        elif not self.model_pt_path:
            raise RuntimeError("the manifest names neither a serializedFile nor a modelFile")
        elif self.model_pt_path.endswith(".onnx"):
            self.model = self._setup_ort_session(self.model_pt_path)
        elif self.model_pt_path.endswith(".so"):
            if not self._use_torch_export_aot_compile():
                raise RuntimeError(f"{serialized}: a .so model needs `pt2: export: "
                                   "aot_compile: true` in the model's configuration")
            if self.map_location == "cuda":
                torch.cuda.set_device(self.device)
            self.model = self._load_torch_export_aot_compile(self.model_pt_path)
        else:
            self.model = self._load_torchscript_model(self.model_pt_path)
            self.model.eval()
        self._compile()
        self.mapping = load_label_mapping(os.path.join(model_dir, "index_to_name.json"))
        self.initialized = True
        logger.debug("model loaded from %s on %s", self.model_pt_path, self.device)

    def _select_device(self, gpu_id):
        """CUDA (or XPU with TS_IPEX_GPU_ENABLE=true, or MPS) device `gpu_id` when the server
        gave the worker a GPU, the CPU otherwise."""
        if gpu_id is not None and torch.cuda.is_available():
            self.map_location = "cuda"
            self.device = torch.device(f"cuda:{gpu_id}")
        elif (gpu_id is not None and os.environ.get("TS_IPEX_GPU_ENABLE", "false") == "true"
              and hasattr(torch, "xpu") and torch.xpu.is_available()):
            self.map_location = "xpu"
            self.device = torch.device(f"xpu:{gpu_id}")
        elif gpu_id is not None and torch.backends.mps.is_available():
            self.map_location = "mps"
            self.device = torch.device("mps")
        else:
            self.map_location = "cpu"
            self.device = torch.device("cpu")

    def _compile(self):
        """`torch.compile` with the options of the model's `pt2` configuration; a failure is
        logged and the model served uncompiled, as TorchServe does."""
        config = getattr(self, "model_yaml_config", None) or {}
        if "pt2" not in config:
            return
        options = _compile_options(config["pt2"])
        if options is None:
            return
        described = ", ".join(f"{k} {v}" for k, v in options.items())
        try:
            self.model = torch.compile(self.model, **options)
            logger.info("Compiled model with %s", described)
        except Exception as error:  # noqa: BLE001 - TorchServe serves the model uncompiled
            logger.warning("Compiling model with %s has failed; proceeding without "
                           "compilation: %s", described, error)

    def _use_torch_export_aot_compile(self):
        """Whether the model's configuration says `pt2: export: aot_compile: true`."""
        pt2 = (getattr(self, "model_yaml_config", None) or {}).get("pt2")
        export = pt2.get("export") if isinstance(pt2, dict) else None
        return isinstance(export, dict) and bool(export.get("aot_compile"))

    def _load_torch_export_aot_compile(self, model_so_path):
        return torch._export.aot_load(model_so_path, self.map_location)

    def _setup_ort_session(self, model_pt_path):
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise RuntimeError(f"{model_pt_path}: serving an ONNX model needs onnxruntime "
                               "installed in the workers' Python environment") from error
        providers = ["CPUExecutionProvider"]
        if self.map_location == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        return ort.InferenceSession(model_pt_path, providers=providers, sess_options=options)

    def _load_torchscript_model(self, model_pt_path):
        return torch.jit.load(model_pt_path, map_location=self.device)

    def _load_pickled_model(self, model_dir, model_file, model_pt_path):
        """Instantiates the one class of `model_file` and loads the state dict into it."""
        if not os.path.isfile(os.path.join(model_dir, model_file)):
            raise RuntimeError("Missing the model.py file")
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

    @timed
    def preprocess(self, data):
        """The batch as one tensor."""
        return torch.as_tensor(data, device=self.device)

    @timed
    def inference(self, data, *args, **kwargs):
        """Runs the model without autograd."""
        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    @timed
    def postprocess(self, data):
        """One output per request."""
        return data.tolist()

    def _header_is_true(self, name):
        return self.context is not None and self.context.get_request_header(0, name) == "True"

    def _is_explain(self):
        """Whether the batch asks for explanations: the frontend sends `explain: True`."""
        if self._header_is_true("explain"):
            self.explain = True
            return True
        return False

    def _is_describe(self):
        """Whether the batch asks for the handler's description (header `describe: True`,
        which the management API's customized describe sends)."""
        return self._header_is_true("describe")

    def describe_handle(self):
        """The model's customized description; handlers override this."""
        return None

    def get_device(self):
        return self.device

    def explain_handle(self, data_preprocess, raw_data):
        """The explanations of the first request, from `get_insights` with the request's
        input and its optional `target` (0 when absent)."""
        logger.info("Calculating Explanations")
        row = raw_data[0]
        inputs, target = row, 0
        if isinstance(row, dict):
            inputs = row.get("data") or row.get("body")
            target = row.get("target") or 0
        self.target = target
        return self.get_insights(data_preprocess, inputs, target)

    def get_insights(self, tensor_data, raw_data, target):
        """Explanations for `tensor_data`; handlers that can explain override this."""
        raise NotImplementedError(f"{type(self).__name__} does not implement get_insights")

    def handle(self, data, context):
        """describe_handle for a describe request; otherwise preprocess → inference →
        postprocess, or preprocess → explain_handle when the request asks for explanations,
        all inside the PyTorch profiler when ENABLE_TORCH_PROFILER is set. The handler time
        is recorded as a metric."""
        start = time.time()
        self.context = context
        if os.environ.get("ENABLE_TORCH_PROFILER"):
            if self.manifest is None:
                self.manifest = context.manifest
            output, _ = self._infer_with_profiler(data=data)
        elif self._is_describe():
            output = [self.describe_handle()]
        else:
            data_preprocess = self.preprocess(data)
            if self._is_explain():
                output = self.explain_handle(data_preprocess, data)
            else:
                output = self.postprocess(self.inference(data_preprocess))
        context.metrics.add_time("HandlerTime", round((time.time() - start) * 1000, 2), None, "ms")
        return output

    def _infer_with_profiler(self, data):
        """The batch's steps inside `torch.profiler.profile(**self.profiler_args)`: by default
        CPU (and CUDA) activity with shapes, the trace written for TensorBoard to
        /tmp/pytorch_profiler/<model name>. Returns (output, profiler)."""
        from torch.profiler import ProfilerActivity, profile, record_function

        if not getattr(self, "profiler_args", None):
            activities = [ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(ProfilerActivity.CUDA)
            self.profiler_args = {"activities": activities, "record_shapes": True}
        if "on_trace_ready" not in self.profiler_args:
            model_name = ((self.manifest or {}).get("model") or {}).get("modelName", "")
            result_path = os.path.join(PROFILER_OUTPUT, model_name)
            self.profiler_args["on_trace_ready"] = torch.profiler.tensorboard_trace_handler(
                result_path)
            logger.info("Saving chrome trace to : %s", result_path)
        with profile(**self.profiler_args) as prof:
            with record_function("preprocess"):
                data_preprocess = self.preprocess(data)
            if self._is_explain():
                with record_function("explain"):
                    output = self.explain_handle(data_preprocess, data)
            else:
                with record_function("inference"):
                    output = self.inference(data_preprocess)
                with record_function("postprocess"):
                    output = self.postprocess(output)
        logger.info(prof.key_averages().table(sort_by="cpu_time_total", row_limit=10))
        return output, prof
