"""TorchServe's `ts.metrics` names that handlers import: Dimension and MetricTypes."""
