"""torchyard's stand-in for TorchServe's `ts` package (used only when TorchServe is absent).

A module of TorchServe's package that the stand-in does not hold fails to import with an error
that says to install TorchServe's own package, instead of a bare "No module named"."""

import sys
from importlib.abc import MetaPathFinder

__version__ = "0.12.0"

#: What a handler that imports an uncovered module is told.
INSTALL_HINT = ("{name} is not part of torchyard's stand-in for TorchServe's `ts` package; "
                "install TorchServe's package (pip install torchserve==0.12.0) into the "
                "workers' Python environment to use it")

#: TorchServe 0.12's modules (and packages, with everything under them) the stand-in leaves
#: out: its own frontend's worker, launchers, metric cache and system metrics, and the
#: handlers for accelerator libraries and distributed inference.
UNCOVERED = frozenset(f"ts.{name}" for name in (
    "arg_parser", "async_service", "launcher", "llm_launcher", "model_loader", "model_server",
    "model_service", "model_service_worker", "service",
    "handler_utils.distributed", "handler_utils.hf_batch_streamer", "handler_utils.preprocess",
    "metrics.caching_metric", "metrics.metric", "metrics.metric_abstract",
    "metrics.metric_cache_abstract", "metrics.metric_cache_errors",
    "metrics.metric_cache_yaml_impl", "metrics.metric_collector", "metrics.metric_encoder",
    "metrics.metrics_store", "metrics.process_memory_metric", "metrics.system_metrics",
    "torch_handler.contractions", "torch_handler.dali_handler",
    "torch_handler.dali_image_classifier", "torch_handler.densenet_handler",
    "torch_handler.distributed", "torch_handler.request_envelope",
    "torch_handler.trt_llm_handler", "torch_handler.vllm_handler",
    "utils.hf_utils", "utils.setup_model_venv", "utils.timeit_decorator"))


class _UncoveredModules(MetaPathFinder):
    """Last on `sys.meta_path`: reached only when no other finder has found the module."""

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if any(".".join(parts[:n]) in UNCOVERED for n in range(2, len(parts) + 1)):
            raise ModuleNotFoundError(INSTALL_HINT.format(name=fullname), name=fullname)
        return None


if not any(isinstance(finder, _UncoveredModules) for finder in sys.meta_path):
    sys.meta_path.append(_UncoveredModules())
