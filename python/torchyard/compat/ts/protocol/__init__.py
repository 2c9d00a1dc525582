"""`ts.protocol`: the parts of TorchServe's worker protocol module that handlers use."""
