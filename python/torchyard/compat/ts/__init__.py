"""torchyard's stand-in for TorchServe's `ts` package (used only when TorchServe is absent)."""

__version__ = "0.12.0"
