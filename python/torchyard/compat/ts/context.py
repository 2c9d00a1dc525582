"""`ts.context`: the handler context, as TorchServe names it."""

from torchyard.context import Context, Metrics, RequestProcessor

__all__ = ["Context", "Metrics", "RequestProcessor"]
