"""torchyard's Python side: the worker process that runs TorchServe-style handlers."""
