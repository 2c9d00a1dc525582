"""Metric units by their short names (TorchServe's `ts.metrics.unit`)."""


class Units:
    """`units`: short name (ms, percent, MB, ...) → the unit name metrics report."""

    def __init__(self):
        self.units = {"ms": "Milliseconds", "s": "Seconds", "percent": "Percent",
                      "count": "Count", "MB": "Megabytes", "GB": "Gigabytes", "kB": "Kilobytes",
                      "B": "Bytes", "": "unit", None: "unit"}
