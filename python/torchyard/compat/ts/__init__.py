"""torchyard's stand-in for TorchServe's `ts` package (used only when TorchServe is absent).

A `ts.*` module the stand-in does not hold fails to import with an error that says to install
TorchServe's own package, instead of a bare "No module named"."""

import sys
from importlib.abc import MetaPathFinder

__version__ = "0.12.0"

#: What a handler that imports an uncovered module is told.
INSTALL_HINT = ("{name} is not part of torchyard's stand-in for TorchServe's `ts` package; "
                "install TorchServe's package (pip install torchserve==0.12.0) into the "
                "workers' Python environment to use it")


class _UncoveredModules(MetaPathFinder):
    """Last on `sys.meta_path`: reached only when no other finder has found a `ts.*` module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("ts."):
            raise ModuleNotFoundError(INSTALL_HINT.format(name=fullname), name=fullname)
        return None


if not any(isinstance(finder, _UncoveredModules) for finder in sys.meta_path):
    sys.meta_path.append(_UncoveredModules())
