"""TorchServe's `ts.metrics` names that handlers import: Dimension, MetricTypes and Units.
Handlers record metrics through `context.metrics`; TorchServe's metric cache and system
metrics modules are not part of the stand-in."""
