"""Function nodes of the dog-breed example."""

import json


def _json(value):
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    return json.loads(value) if isinstance(value, str) else value


def pre_processing(data, context):
    """Takes the request's image (a JSON list of four features, as the body or form field
    `data`) and hands it on as JSON."""
    if data is None:
        return None
    return [{"image": _json(row.get("data") if row.get("data") is not None else row.get("body"))}
            for row in data]


def post_processing(data, context):
    """The answer: the breed when the breed model ran (the route sent a dog there), else the
    classifier's label. Only the branch that ran is among the fields."""
    if data is None:
        return None
    out = []
    for row in data:
        if "dog_breed_classification" in row:
            breed = _json(row["dog_breed_classification"])
            out.append({"animal": "dog", "breed": breed["label"], "p": breed["p"]})
        else:
            animal = _json(row["cat_dog_classification"])
            out.append({"animal": animal["label"], "p": animal["p"]})
    return out
