"""Handler of both dog-breed example models: an "image" (four features, a JSON list, alone or as
the `image` field of a JSON object) in; the most likely label, its probability and the image
out, so that a node after this one can look at the same image."""

import json
import os

import torch

_model = None
_labels = None


def _image(row):
    value = row.get("body") if row.get("body") is not None else row.get("data")
    if isinstance(value, (bytes, bytearray)):
        value = json.loads(value.decode("utf-8"))
    elif isinstance(value, str):
        value = json.loads(value)
    return value["image"] if isinstance(value, dict) else value


def handle(data, context):
    """Loads the model and labels when called with None, then labels each image."""
    global _model, _labels
    if data is None:
        model_dir = context.system_properties["model_dir"]
        _model = torch.jit.load(os.path.join(model_dir, context.manifest["model"]["serializedFile"]),
                                map_location="cpu")
        with open(os.path.join(model_dir, "labels.json")) as f:
            _labels = json.load(f)
        return None
    images = [_image(row) for row in data]
    with torch.inference_mode():
        probabilities = _model(torch.tensor(images, dtype=torch.float32))
    best = probabilities.argmax(dim=-1).tolist()
    return [{"label": _labels[k], "p": round(float(probabilities[i, k]), 4), "image": images[i]}
            for i, k in enumerate(best)]
