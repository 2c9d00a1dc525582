"""`context.metrics`: TorchServe's custom metrics API. Updates are summed up per metric and
dimension values (counters added, gauges last, histogram observations kept) until the worker
sends them to the server with its reply; the server exports them on `/metrics`."""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

log = logging.getLogger("torchyard.metrics")

#: One series' updates as the protocol carries them: kind, name, unit, dimension names and
#: values, and the values to apply (a counter's sum, a gauge's last value, or every histogram
#: observation).
Sample = Tuple[str, str, str, List[str], List[str], List[float]]

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

_KINDS = frozenset((COUNTER, GAUGE, HISTOGRAM))

#: Held while updates are recorded or drained: an async worker's plain handlers record them on
#: pool threads while its loop drains them.
_LOCK = threading.Lock()

#: TorchServe's default dimensions of an update made outside a batch.
_OUTSIDE_BATCH = (["Level"], ("Error",))


def kind_of(metric_type: Any, default: str = COUNTER) -> str:
    """The kind named by a `MetricTypes` member (TorchServe's or the stand-in's) or a string."""
    if metric_type is None:
        return default
    if metric_type in _KINDS:
        return metric_type
    kind = str(getattr(metric_type, "value", metric_type)).lower()
    if kind not in _KINDS:
        raise ValueError(f"unknown metric type {metric_type!r}: counter, gauge or histogram")
    return kind


class Metric:
    """A named metric of the cache, as TorchServe's `CachingMetric`."""

    def __init__(self, name: str, unit: str, dimension_names: Sequence[str], kind: str,
                 pending: List["Metric"]):
        self.metric_name = name
        self.unit = unit
        self.dimension_names = list(dimension_names)
        self.metric_type = kind
        #: The worker's list of metrics with updates not yet sent.
        self._pending = pending
        #: (Dimension names, dimension values) -> a counter's sum, a gauge's last value,
        #: histogram observations. Keyed by the names too: `update` may replace them while
        #: updates recorded under the old ones wait to be sent.
        self._updates: Optional[Dict[Tuple[Tuple[str, ...], Tuple[str, ...]], Any]] = None

    def add_or_update(self, value: Any, dimension_values: Sequence[Any] = (),
                      request_id: str = "") -> None:
        """Records `value` for these dimension values (one per dimension name). A wrong number
        of values, a value that is not a number or a negative counter update is logged and
        dropped, as TorchServe does."""
        self._record(value, tuple(map(str, dimension_values)))

    def _record(self, value: Any, values: Tuple[str, ...]) -> None:
        try:
            if len(values) != len(self.dimension_names):
                raise ValueError(f"dimension values {list(values)} should correspond "
                                 f"to dimension names {self.dimension_names}")
            number = float(value)
            if number < 0 and self.metric_type == COUNTER:
                raise ValueError("Counter metric update value cannot be negative")
        except (TypeError, ValueError) as exc:
            log.error("[METRICS]Failed to update metric with name:%s with value: %r: %s",
                      self.metric_name, value, exc)
            return
        key = (tuple(self.dimension_names), values)
        with _LOCK:
            updates = self._updates
            if updates is None:
                updates = self._updates = {}
                self._pending.append(self)
            if self.metric_type == COUNTER:
                updates[key] = updates.get(key, 0.0) + number
            elif self.metric_type == GAUGE:
                updates[key] = number
            else:
                updates.setdefault(key, []).append(number)

    def update(self, value: Any, request_id: str = "", dimensions: Sequence[Any] = ()) -> None:
        """TorchServe's older spelling: `dimensions` are Dimension objects and replace the
        metric's dimension names; updates already recorded keep the names they were recorded
        with, as TorchServe, which emits each update at once, sends them."""
        self.dimension_names = [d.name for d in dimensions]
        self.add_or_update(value, [d.value for d in dimensions], request_id)

    def drain(self) -> List[Sample]:
        """The updates recorded since the last call, one entry per dimension names and
        values."""
        updates, self._updates = self._updates or {}, None
        many = self.metric_type == HISTOGRAM
        return [(self.metric_type, self.metric_name, self.unit, list(names), list(values),
                 value if many else [value]) for (names, values), value in updates.items()]


def drain(pending: List[Metric]) -> List[Sample]:
    """Every update of the metrics in `pending`, which is emptied."""
    with _LOCK:
        samples = [sample for metric in pending for sample in metric.drain()]
        pending.clear()
    return samples


class Metrics:
    """TorchServe's metric cache (`context.metrics`), keyed by metric type and name. Metrics
    declared in the server's `metrics_config` are in it from the start."""

    def __init__(self, model_name: str = "", pending: Optional[List[Metric]] = None,
                 declared: Sequence[dict] = ()):
        self.model_name = model_name
        #: Metrics with updates not yet sent to the server (shared by a worker's contexts).
        self.pending: List[Metric] = pending if pending is not None else []
        #: Batch index -> request id of the batch being served; set per batch.
        self.request_ids: Optional[Dict[int, str]] = None
        #: Metric type -> name -> metric, as TorchServe's cache is keyed.
        self.cache: Dict[str, Dict[str, Metric]] = {COUNTER: {}, GAUGE: {}, HISTOGRAM: {}}
        self._in_batch = (["ModelName", "Level"], (str(model_name), "Model"))
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
        metric = Metric(metric_name, unit, dimension_names or (), kind, self.pending)
        self.cache[kind][metric_name] = metric
        return metric

    def get_metric(self, metric_name: str, metric_type: Any = COUNTER) -> Metric:
        """The metric of this name and type, created without dimensions on first use."""
        metric = self.cache[kind_of(metric_type)].get(metric_name)
        return metric if metric is not None else self.add_metric_to_cache(
            metric_name, metric_type=metric_type)

    def _add(self, name: str, value: Any, unit: str, in_batch: bool, dimensions: Any,
             kind: str) -> None:
        """Records with TorchServe's default dimensions: `ModelName` and `Level: Model` while the
        handler loads or serves a batch (both have request ids), `Level: Error` without one."""
        default_names, default_values = self._in_batch if in_batch else _OUTSIDE_BATCH
        if dimensions:
            names = [d.name for d in dimensions]
            values = [str(d.value) for d in dimensions]
            for default_name, default_value in zip(default_names, default_values):
                if default_name not in names:
                    names.append(default_name)
                    values.append(default_value)
            values = tuple(values)
        else:
            names, values = default_names, default_values
        metric = self.cache[kind].get(name)
        if metric is None:
            metric = self.add_metric_to_cache(name, unit, names, kind)
        metric._record(value, values)

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
