"""`ts.context`: the handler context, as TorchServe names it."""

from torchyard.context import Context, RequestProcessor
from torchyard.metrics import Metrics

__all__ = ["Context", "Metrics", "RequestProcessor"]
