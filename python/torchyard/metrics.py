"""`context.metrics`: TorchServe's custom metrics API. Updates are kept as samples that the
worker sends to the server with its reply; the server exports them on `/metrics`."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

log = logging.getLogger("torchyard.metrics")

#: One update as the protocol carries it: kind, name, unit, dimension names and values, value.
Sample = Tuple[str, str, str, List[str], List[str], float]

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


def kind_of(metric_type: Any, default: str = COUNTER) -> str:
    """The kind named by a `MetricTypes` member (TorchServe's or the stand-in's) or a string."""
    if metric_type is None:
        return default
    kind = str(getattr(metric_type, "value", metric_type)).lower()
    if kind not in (COUNTER, GAUGE, HISTOGRAM):
        raise ValueError(f"unknown metric type {metric_type!r}: counter, gauge or histogram")
    return kind


class Metric:
    """A named metric of the cache, as TorchServe's `CachingMetric`."""

    def __init__(self, name: str, unit: str, dimension_names: Sequence[str], kind: str,
                 sink: List[Sample]):
        self.metric_name = name
        self.unit = unit
        self.dimension_names = list(dimension_names)
        self.metric_type = kind
        self._sink = sink

    def add_or_update(self, value: Any, dimension_values: Sequence[Any] = (),
                      request_id: str = "") -> None:
        """Records `value` for these dimension values (one per dimension name). A wrong number
        of values, a value that is not a number or a negative counter update is logged and
        dropped, as TorchServe does."""
        try:
            if len(dimension_values) != len(self.dimension_names):
                raise ValueError(f"dimension values {list(dimension_values)} should correspond "
                                 f"to dimension names {self.dimension_names}")
            number = float(value)
            if number < 0 and self.metric_type == COUNTER:
                raise ValueError("Counter metric update value cannot be negative")
        except (TypeError, ValueError) as exc:
            log.error("[METRICS]Failed to update metric with name:%s with value: %r: %s",
                      self.metric_name, value, exc)
            return
        self._sink.append((self.metric_type, self.metric_name, self.unit, self.dimension_names,
                           list(map(str, dimension_values)), number))

    def update(self, value: Any, request_id: str = "", dimensions: Sequence[Any] = ()) -> None:
        """TorchServe's older spelling: `dimensions` are Dimension objects and replace the
        metric's dimension names."""
        self.dimension_names = [d.name for d in dimensions]
        self.add_or_update(value, [d.value for d in dimensions], request_id)


class Metrics:
    """TorchServe's metric cache (`context.metrics`), keyed by metric type and name. Metrics
    declared in the server's `metrics_config` are in it from the start."""

    def __init__(self, model_name: str = "", sink: Optional[List[Sample]] = None,
                 declared: Sequence[dict] = ()):
        self.model_name = model_name
        #: Updates not yet sent to the server.
        self.sink: List[Sample] = sink if sink is not None else []
        #: Batch index -> request id of the batch being served; set per batch.
        self.request_ids: Optional[Dict[int, str]] = None
        self.cache: Dict[Tuple[str, str], Metric] = {}
        for d in declared:
            self.add_metric_to_cache(d["name"], d.get("unit", ""), d.get("dimensions", ()),
                                     d.get("type", COUNTER))

    def set_request_ids(self, request_ids: Optional[Dict[int, str]]) -> None:
        self.request_ids = request_ids

    def add_metric_to_cache(self, metric_name: str, unit: str = "",
                            dimension_names: Sequence[str] = (),
                            metric_type: Any = COUNTER) -> Metric:
        """Creates (or replaces) a metric and returns it; nothing is recorded until it is
        updated."""
        kind = kind_of(metric_type)
        metric = Metric(metric_name, unit, dimension_names or (), kind, self.sink)
        self.cache[(kind, metric_name)] = metric
        return metric

    def get_metric(self, metric_name: str, metric_type: Any = COUNTER) -> Metric:
        """The metric of this name and type, created without dimensions on first use."""
        metric = self.cache.get((kind_of(metric_type), metric_name))
        return metric if metric is not None else self.add_metric_to_cache(
            metric_name, metric_type=metric_type)

    def _add(self, name: str, value: Any, unit: str, in_batch: bool, dimensions: Any,
             kind: str) -> None:
        """Records with TorchServe's default dimensions: `ModelName` and `Level: Model` while a
        batch is served, `Level: Error` outside one."""
        if dimensions:
            names = [d.name for d in dimensions]
            values = [d.value for d in dimensions]
            for default_name, default_value in zip(*self._defaults(in_batch)):
                if default_name not in names:
                    names.append(default_name)
                    values.append(default_value)
        else:
            names, values = self._defaults(in_batch)
        metric = self.cache.get((kind, name))
        if metric is None:
            metric = self.add_metric_to_cache(name, unit, names, kind)
        metric.add_or_update(value, values)

    def _defaults(self, in_batch: bool) -> Tuple[List[str], List[str]]:
        if in_batch:
            return ["ModelName", "Level"], [self.model_name, "Model"]
        return ["Level"], ["Error"]

    def add_metric(self, name: str, value: Any, unit: str = "", idx: Any = None,
                   dimensions: Any = None, metric_type: Any = COUNTER) -> None:
        self._add(name, value, unit, self.request_ids is not None, dimensions,
                  kind_of(metric_type))

    def add_counter(self, name: str, value: Any, idx: Any = None, dimensions: Any = None) -> None:
        self._add(name, value, "count", self.request_ids is not None, dimensions, COUNTER)

    def add_time(self, name: str, value: Any, idx: Any = None, unit: str = "ms",
                 dimensions: Any = None, metric_type: Any = GAUGE) -> None:
        if unit not in ("ms", "s"):
            raise ValueError("the unit for a timed metric should be one of ['ms', 's']")
        self._add(name, value, unit, self.request_ids is not None, dimensions,
                  kind_of(metric_type, GAUGE))

    def add_size(self, name: str, value: Any, idx: Any = None, unit: str = "MB",
                 dimensions: Any = None, metric_type: Any = GAUGE) -> None:
        if unit not in ("MB", "kB", "GB", "B"):
            raise ValueError("The unit for size based metric is one of ['MB','kB', 'GB', 'B']")
        self._add(name, value, unit, self.request_ids is not None, dimensions,
                  kind_of(metric_type, GAUGE))

    def add_percent(self, name: str, value: Any, idx: Any = None, dimensions: Any = None,
                    metric_type: Any = GAUGE) -> None:
        self._add(name, value, "percent", self.request_ids is not None, dimensions,
                  kind_of(metric_type, GAUGE))

    def add_error(self, name: str, value: Any, dimensions: Any = None) -> None:
        """A counter with `Level: Error`, whether or not a batch is served."""
        self._add(name, value, "", False, dimensions, COUNTER)
