"""A metric dimension: a name and a value (TorchServe's `ts.metrics.dimension`)."""


class Dimension:
    """One `name: value` pair of a metric update."""

    def __init__(self, name: str, value: str):
        self.name = name
        self.value = value

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"

    def to_dict(self) -> dict:
        return {"Name": self.name, "Value": self.value}
