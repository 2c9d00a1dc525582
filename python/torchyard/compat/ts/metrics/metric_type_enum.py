"""The kinds of metric a handler records (TorchServe's `ts.metrics.metric_type_enum`)."""

import enum


class MetricTypes(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"
