"""Inputs as TorchServe hands them to handlers (raw bytes with `decode_input_request=false`,
form values byte for byte, `x-request-id` on every response); what a handler reads and sets on
its context (request headers, response status and headers, system properties, manifest,
model-config YAML, request ids, metrics), the same with torchyard's stand-in `ts` and with
TorchServe's own package in the workers' Python (the `server` fixture runs once with each); and
the stand-in built-in handlers answering exactly what TorchServe's own handlers answer for the
same model and input.

The reference is TorchServe 0.12's `ts` package, which scripts/setup.sh installs into
`.venv/torchserve-ref`: a folder beside the venv's site-packages, on no import path (the
`torchserve` fixture checks this). This test process puts the folder on its own `sys.path` and
runs TorchServe's handler class in-process, with TorchServe's context, on the same files the
archive holds; the server's workers run the stand-in's built-in handlers, and then TorchServe's
own with torchyard's context."""

import importlib.util
import io
import json
import subprocess
import sys

import pytest
import requests

from support.archives import build_mar, manifest
from support.server import PYTHON
from support.ts_packages import REFERENCE, worker_env

INSPECT = '''
def handle(data, context):
    if data is None:
        return None
    return [{"id": context.request_ids[idx],
             "params": {name: [type(value).__name__,
                               value.hex() if isinstance(value, (bytes, bytearray)) else value]
                        for name, value in row.items()}}
            for idx, row in enumerate(data)]
'''


#: Reports what its context says of each request, and answers the status and header the request
#: asks for (`x-ask-status`, `x-echo`); records a metric per request.
CONTEXT = '''
import os

import ts
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes


class ContextHandler:
    def initialize(self, context):
        self.manifest = context.manifest

    def handle(self, data, context):
        out = []
        for idx, row in enumerate(data):
            ask = context.get_request_header(idx, "x-ask-status")
            if ask:
                context.set_response_status(int(ask), "Asked", idx)
            context.set_response_header(idx, "x-echo", context.get_request_header(idx, "x-echo"))
            context.metrics.add_metric("ContextCalls", 1, "count",
                                       dimensions=[Dimension("Package", ts.__name__)],
                                       metric_type=MetricTypes.COUNTER)
            properties = context.system_properties
            out.append({
                "id": context.get_request_id(idx),
                "headers": {k: v for k, v in context.get_all_request_header(idx).items()
                            if k.startswith("x-")},
                "system": {k: properties[k] for k in ("batch_size", "server_name",
                                                      "limit_max_image_pixels")},
                "model_dir": sorted(os.listdir(properties["model_dir"])),
                "manifest": self.manifest["model"]["modelName"],
                "yaml": context.model_yaml_config,
                "ts": ts.__file__,
            })
        return out
'''

CONTEXT_YAML = "minWorkers: 1\nhandler:\n  greeting: hello\n  sizes: [1, 2]\n"


def register(server, name, **params):
    answer = requests.post(f"{server.management}/models",
                           params={"url": f"{name}.mar", "initial_workers": 1,
                                   "synchronous": "true", **params})
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def raw_server(start_module_server):
    """A server with `decode_input_request=false` and the inspecting handler as `raw`."""
    server = start_module_server(properties={"decode_input_request": "false"})
    build_mar(server.store, "raw", {"inspect.py": INSPECT}, manifest("raw", "inspect.py"))
    register(server, "raw")
    return server


@pytest.fixture(scope="module")
def server(start_module_server, ts_package):
    """A server with TorchServe's default settings, the inspecting handler as `inspect` and
    the context handler as `context`; its workers import `ts_package`."""
    server = start_module_server(env=worker_env(ts_package))
    build_mar(server.store, "inspect", {"inspect.py": INSPECT}, manifest("inspect", "inspect.py"))
    register(server, "inspect")
    build_mar(server.store, "context", {"context.py": CONTEXT, "config.yaml": CONTEXT_YAML},
              manifest("context", "context.py", configFile="config.yaml"))
    register(server, "context")
    return server


def test_handlers_read_and_set_their_context(server, ts_package):
    url = f"{server.inference}/predictions/context"
    answer = requests.post(url, data=b"x", headers={"X-Echo": "ping", "X-Ask-Status": "202"})
    assert answer.status_code == 202, answer.text
    assert answer.headers["x-echo"] == "ping"
    seen = answer.json()
    assert seen["id"] == answer.headers["x-request-id"]
    assert seen["headers"]["x-echo"] == "ping" and seen["headers"]["x-ask-status"] == "202"
    assert seen["system"] == {"batch_size": 1, "server_name": "torchyard",
                              "limit_max_image_pixels": True}
    assert {"context.py", "config.yaml"} <= set(seen["model_dir"]), seen["model_dir"]
    assert seen["manifest"] == "context"
    assert seen["yaml"]["handler"] == {"greeting": "hello", "sizes": [1, 2]}
    assert (str(REFERENCE) in seen["ts"]) == (ts_package == "torchserve"), seen["ts"]
    plain = requests.post(url, data=b"x", headers={"X-Echo": "again"})
    assert plain.status_code == 200 and plain.headers["x-echo"] == "again"
    metrics = requests.get(f"{server.metrics}/metrics", params={"name[]": "ContextCalls"}).text
    assert 'ContextCalls{Package="ts",ModelName="context",Level="Model"' in metrics, metrics


def test_decode_input_request_false_hands_json_and_text_over_as_bytes(raw_server, server):
    body = b'{"data": "test"}'
    for target, decoded in ((raw_server, False), (server, True)):
        name = "raw" if target is raw_server else "inspect"
        as_json = requests.post(f"{target.inference}/predictions/{name}", data=body,
                                headers={"Content-Type": "application/json"})
        as_text = requests.post(f"{target.inference}/predictions/{name}", data="héllo",
                                headers={"Content-Type": "text/plain; charset=utf-8"})
        assert as_json.status_code == as_text.status_code == 200, as_json.text + as_text.text
        if decoded:
            assert as_json.json()["params"] == {"body": ["dict", {"data": "test"}]}
            assert as_text.json()["params"] == {"body": ["str", "héllo"]}
        else:
            assert as_json.json()["params"] == {"body": ["bytearray", body.hex()]}
            assert as_text.json()["params"] == {"body": ["bytearray", "héllo".encode().hex()]}


def test_form_encoded_bytes_arrive_unchanged(server):
    every_byte = bytes(range(256))
    answer = requests.post(f"{server.inference}/predictions/inspect",
                           data={"data": every_byte, "note": "a b+c"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["params"] == {"data": ["bytearray", every_byte.hex()],
                                       "note": ["bytearray", b"a b+c".hex()]}


def test_every_response_carries_the_request_id_the_handler_saw(server):
    ids = set()
    for _ in range(2):
        answer = requests.post(f"{server.inference}/predictions/inspect", data=b"x")
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"] == answer.json()["id"]
        ids.add(answer.json()["id"])
    assert len(ids) == 2
    for url in (f"{server.inference}/ping", f"{server.inference}/predictions/nope",
                f"{server.inference}/no/such/path", f"{server.management}/models",
                f"{server.management}/models/nope", f"{server.metrics}/metrics"):
        answer = requests.get(url)
        assert len(answer.headers.get("x-request-id", "")) == 36, (url, answer.headers)
    failed = requests.delete(f"{server.inference}/ping")
    assert failed.status_code == 405 and "x-request-id" in failed.headers


# --- built-in handlers against TorchServe's own ---------------------------------------------

@pytest.fixture(scope="module")
def torchserve():
    """`run(handler, model_dir, manifest, data)` → what TorchServe's built-in `handler`
    answers, run in this process from the reference package."""
    assert (REFERENCE / "ts" / "torch_handler").is_dir(), (
        f"TorchServe's reference package is missing from {REFERENCE}: run scripts/setup.sh")
    probe = subprocess.run([str(PYTHON), "-c", "import ts"], capture_output=True)
    assert probe.returncode != 0, "the server's interpreter imports a real `ts`, not the stand-in"
    sys.path.insert(0, str(REFERENCE))
    from ts.context import Context, RequestProcessor
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.utils.util import list_classes_from_module

    metrics = MetricsCacheYamlImpl(config_file_path=str(REFERENCE / "ts/configs/metrics.yaml"))
    metrics.initialize_cache()

    def run(handler, model_dir, model_manifest, data, headers=None):
        """`handler`: a built-in name, or a handler file of `model_dir`; `headers`: the
        request's (`{"explain": "True"}` asks for explanations)."""
        context = Context(model_manifest["model"]["modelName"], str(model_dir), model_manifest,
                          1, None, "0.12.0", metrics=metrics, model_yaml_config={})
        context.request_ids = {0: "reference"}
        context.request_processor = [RequestProcessor(headers or {})]
        sys.path.insert(0, str(model_dir))
        try:
            module = (handler[:-3] if handler.endswith(".py") else f"ts.torch_handler.{handler}")
            (service_class,) = list_classes_from_module(importlib.import_module(module))
            service = service_class()
            service.initialize(context)
            return service.handle(data, context)
        finally:
            sys.path.remove(str(model_dir))

    yield run
    sys.path.remove(str(REFERENCE))
    for name in [m for m in sys.modules if m == "ts" or m.startswith("ts.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def builtin_server(start_module_server, ts_package):
    """Serves the built-in handlers of `ts_package`: the stand-in's, or TorchServe's own run
    with torchyard's context."""
    return start_module_server(env=worker_env(ts_package))


def serve_and_compare(server, torchserve, tmp_path, name, handler, files, request, expected_of,
                      **model_fields):
    """Archives `files` as model `name` for the built-in `handler`, posts `request` (kwargs of
    requests.post) to the server, and returns (server's answer, TorchServe's answer for the
    handler data `expected_of`)."""
    model_manifest = manifest(name, handler, **model_fields)
    model_dir = tmp_path / name
    build_mar(tmp_path, name, files, model_manifest, fmt="dir")
    build_mar(server.store, name, files, model_manifest)
    register(server, name)
    answer = requests.post(f"{server.inference}/predictions/{name}", **request)
    assert answer.status_code == 200, answer.text
    return answer.json(), torchserve(handler, model_dir, model_manifest, [expected_of])[0]


def png(width, height):
    """A PNG of smooth colour gradients, so that crops and resizes matter."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], 2)
    out = io.BytesIO()
    Image.fromarray(pixels.astype("uint8")).save(out, format="PNG")
    return out.getvalue()


def scripted(model, path):
    import torch

    torch.jit.script(model.eval()).save(str(path))
    return path


def eager_model(folder, module_name, source):
    """An instance of the one class of `source`, written as `folder/module_name.py`."""
    path = folder / f"{module_name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"{module_name}_for_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (model_class,) = [c for c in vars(module).values()
                      if isinstance(c, type) and c.__module__ == module.__name__]
    return model_class()


def image_request(image):
    return {"data": image, "headers": {"Content-Type": "application/octet-stream"}}


def test_image_classifier_matches_torchserve(builtin_server, torchserve, tmp_path):
    import torchvision

    image = png(320, 250)
    labels = {str(i): [f"n{i:08d}", f"class_{i}"] for i in range(10)}
    model = scripted(torchvision.models.resnet18(weights=None, num_classes=10), tmp_path / "r.pt")
    got, expected = serve_and_compare(
        builtin_server, torchserve, tmp_path, "classifier", "image_classifier",
        {"r.pt": model, "index_to_name.json": json.dumps(labels)}, image_request(image),
        {"body": bytearray(image)}, serializedFile="r.pt")
    assert list(got) == list(expected) and len(got) == 5
    assert list(got.values()) == pytest.approx(list(expected.values()), rel=1e-4)


DIGITS_HANDLER = '''
from torchvision import transforms
from ts.torch_handler.image_classifier import ImageClassifier


class DigitClassifier(ImageClassifier):
    """TorchServe's MNIST example: its own transforms and top-k as class attributes."""

    topk = 3
    image_processing = transforms.Compose([
        transforms.Grayscale(), transforms.Resize(28), transforms.CenterCrop(28),
        transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
'''


def test_image_classifier_subclass_keeps_its_transforms(builtin_server, torchserve, tmp_path):
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 26 * 26, 10))
    pt = scripted(model, tmp_path / "digits.pt")
    image = png(40, 34)
    got, expected = serve_and_compare(
        builtin_server, torchserve, tmp_path, "digits", "digits_handler.py",
        {"digits.pt": pt, "digits_handler.py": DIGITS_HANDLER}, image_request(image),
        {"body": bytearray(image)}, serializedFile="digits.pt")
    assert list(got) == list(expected) and len(got) == 3
    assert list(got.values()) == pytest.approx(list(expected.values()), rel=1e-4)


#: TorchServe's MNIST example handler: grey digits, its own transforms, no Grayscale step;
#: it answers the shape of the batch its preprocess made besides the digit.
MNIST_HANDLER = '''
from torchvision import transforms
from ts.torch_handler.image_classifier import ImageClassifier


class MNISTDigitClassifier(ImageClassifier):
    image_processing = transforms.Compose([
        transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])

    def preprocess(self, data):
        batch = super().preprocess(data)
        self.shape = list(batch.shape)
        return batch

    def postprocess(self, data):
        return [{"digit": row.argmax().item(), "shape": self.shape} for row in data]
'''


def mnist_digit():
    """A grey (mode L) 28x28 PNG of a bar, as MNIST's test images are."""
    from PIL import Image

    image = Image.new("L", (28, 28))
    image.paste(255, (12, 4, 16, 24))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def mnist_model(path):
    """A TorchScript digit classifier over one-channel 28x28 images."""
    import torch

    torch.manual_seed(0)
    return scripted(torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 26 * 26, 10)), path)


def test_grey_mnist_image_stays_one_channel(builtin_server, torchserve, tmp_path):
    digit = mnist_digit()
    got, expected = serve_and_compare(
        builtin_server, torchserve, tmp_path, "mnist", "mnist_handler.py",
        {"mnist.pt": mnist_model(tmp_path / "mnist.pt"), "mnist_handler.py": MNIST_HANDLER},
        image_request(digit), {"body": bytearray(digit)}, serializedFile="mnist.pt")
    assert got == expected
    assert got["shape"] == [1, 1, 28, 28]


def test_image_segmenter_matches_torchserve(builtin_server, torchserve, tmp_path):
    import numpy as np
    import torchvision

    image = png(300, 260)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=4)
    pt = scripted(model, tmp_path / "seg.pt")
    got, expected = serve_and_compare(
        builtin_server, torchserve, tmp_path, "segmenter", "image_segmenter", {"seg.pt": pt},
        image_request(image), {"body": bytearray(image)}, serializedFile="seg.pt")
    got, expected = np.array(got), np.array(expected)
    assert got.shape == expected.shape == (224, 224, 2)
    # Equal up to float noise between processes: a pixel's class may flip only on a near-tie.
    np.testing.assert_allclose(got[..., 1], expected[..., 1], atol=1e-5)
    assert (got[..., 0] != expected[..., 0]).mean() < 1e-3
    assert set(np.unique(expected[..., 0])) <= {0.0, 1.0, 2.0, 3.0}


DETECTOR = '''
import torch
import torchvision


class Detector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rcnn = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, num_classes=3)

    def forward(self, images):
        return self.rcnn(images)
'''


def test_object_detector_matches_torchserve(builtin_server, torchserve, tmp_path):
    import torch

    model = eager_model(tmp_path, "detector_model", DETECTOR)
    with torch.no_grad():  # make class 1 likely, so that boxes pass the 0.5 score threshold
        model.rcnn.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([0.0, 2.5, 0.0]))
    torch.save(model.state_dict(), tmp_path / "det.pt")
    image = png(200, 160)
    got, expected = serve_and_compare(
        builtin_server, torchserve, tmp_path, "detector", "object_detector",
        {"detector_model.py": tmp_path / "detector_model.py", "det.pt": tmp_path / "det.pt",
         "index_to_name.json": json.dumps({"0": "background", "1": "cat", "2": "dog"})},
        image_request(image), {"body": bytearray(image)},
        serializedFile="det.pt", modelFile="detector_model.py")
    assert expected, "the reference found no boxes: the test would prove nothing"
    assert [list(d) for d in got] == [list(d) for d in expected]
    for mine, theirs in zip(got, expected):
        for key in theirs:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-3)


TEXT_MODEL = '''
import torch


class TextSentiment(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.EmbeddingBag(32, 8, mode="mean")
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))
'''


def test_text_classifier_matches_torchserve(builtin_server, torchserve, tmp_path):
    import torch

    text = "The <b>movie</b> was GREAT, wasn't it? Café!"
    words = "the movie was great was not it cafe".split()  # after TorchServe's clean-up
    tokens = sorted(set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])})
    torch.save({token: i + 1 for i, token in enumerate(tokens)} | {"<unk>": 0},
               tmp_path / "source_vocab.pt")
    torch.save(eager_model(tmp_path, "texts_model", TEXT_MODEL).state_dict(),
               tmp_path / "text.pt")
    labels = {"0": "negative", "1": "neutral", "2": "positive"}
    got, expected = serve_and_compare(
        builtin_server, torchserve, tmp_path, "texts", "text_classifier",
        {"texts_model.py": tmp_path / "texts_model.py", "text.pt": tmp_path / "text.pt",
         "source_vocab.pt": tmp_path / "source_vocab.pt",
         "index_to_name.json": json.dumps(labels)},
        {"data": text.encode(), "headers": {"Content-Type": "text/plain"}}, {"body": text},
        serializedFile="text.pt", modelFile="texts_model.py")
    assert list(got) == list(expected) == list(labels.values())
    assert list(got.values()) == pytest.approx(list(expected.values()), rel=1e-5)
