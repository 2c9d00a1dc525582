"""`ts.version`: the TorchServe version the stand-in answers for."""

from ts import __version__

__all__ = ["__version__"]
