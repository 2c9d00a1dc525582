"""The `ts` stand-in covers what TorchServe's examples import, served by the real server and
workers: Captum explanations of the built-in handlers (compared with TorchServe's own handlers
from `.venv/torchserve-ref`), `@timed` and `model_yaml_config` with `pt2` compilation, the
customized describe, `MicroBatching`, and the PyTorch profiler's traces."""

import concurrent.futures
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from support.archives import build_mar, manifest
from test_inputs_handlers import (  # noqa: F401 - torchserve is the reference fixture
    MNIST_HANDLER, REFERENCE, TEXT_MODEL, eager_model, image_request, mnist_digit, mnist_model,
    register, torchserve)


def captum_folder(folder: Path) -> Path:
    """`folder` with links to everything the reference folder holds except TorchServe's own
    package: Captum and the packages it imports, for the workers' PYTHONPATH."""
    for entry in REFERENCE.iterdir():
        if entry.name != "ts" and not entry.name.startswith("torchserve"):
            (folder / entry.name).symlink_to(entry)
    return folder


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    """Workers that can import Captum (but still only the stand-in `ts`)."""
    assert (REFERENCE / "captum").is_dir(), "Captum is missing from the reference folder"
    path = captum_folder(tmp_path_factory.mktemp("captum"))
    return start_module_server(env={"PYTHONPATH": str(path)})


def explain_and_compare(server, torchserve, tmp_path, name, handler, files, request,
                        expected_of, **model_fields):
    """Serves `files` as model `name`, asks `/explanations` for `request`, and returns (the
    server's answer, TorchServe's handler's explanation of `expected_of`)."""
    model_manifest = manifest(name, handler, **model_fields)
    build_mar(tmp_path, name, files, model_manifest, fmt="dir")
    build_mar(server.store, name, files, model_manifest)
    register(server, name)
    answer = requests.post(f"{server.inference}/explanations/{name}", **request)
    assert answer.status_code == 200, answer.text
    expected = torchserve(handler, tmp_path / name, model_manifest, [expected_of],
                          headers={"explain": "True"})
    return answer.json(), expected[0]


def test_vision_explanations_are_captums_integrated_gradients(server, torchserve, tmp_path):
    digit = mnist_digit()
    got, expected = explain_and_compare(
        server, torchserve, tmp_path, "mnist_explained", "mnist_handler.py",
        {"mnist.pt": mnist_model(tmp_path / "mnist.pt"), "mnist_handler.py": MNIST_HANDLER},
        image_request(digit), {"body": bytearray(digit)}, serializedFile="mnist.pt")
    got, expected = np.array(got), np.array(expected)
    assert got.shape == expected.shape == (1, 28, 28)
    assert np.abs(expected).sum() > 0, "zero attributions would prove nothing"
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_text_explanations_are_captums_layer_integrated_gradients(server, torchserve, tmp_path):
    import torch

    words = "a good film".split()
    tokens = sorted(set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])})
    torch.save({token: i + 1 for i, token in enumerate(tokens)} | {"<unk>": 0},
               tmp_path / "source_vocab.pt")
    torch.manual_seed(0)
    torch.save(eager_model(tmp_path, "texts_model", TEXT_MODEL).state_dict(),
               tmp_path / "text.pt")
    got, expected = explain_and_compare(
        server, torchserve, tmp_path, "text_explained", "text_classifier",
        {"texts_model.py": tmp_path / "texts_model.py", "text.pt": tmp_path / "text.pt",
         "source_vocab.pt": tmp_path / "source_vocab.pt"},
        {"data": b"A good film!", "headers": {"Content-Type": "text/plain"}},
        {"body": "A good film!"}, serializedFile="text.pt", modelFile="texts_model.py")
    assert got["words"] == expected["words"] == words
    np.testing.assert_allclose(got["importances"], expected["importances"], rtol=1e-4)


CONFIGURED_MODEL = '''
import torch


class Doubler(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x):
        return self.linear(x)
'''

#: Reads its model-config.yaml, times its preprocess, describes itself.
CONFIGURED_HANDLER = '''
import torch
from ts.handler_utils.timer import timed
from ts.torch_handler.base_handler import BaseHandler


class Configured(BaseHandler):
    @timed
    def preprocess(self, data):
        return torch.tensor([[float(row.get("data") or row.get("body"))] for row in data])

    def postprocess(self, data):
        return [{"y": round(row[0], 4), "greeting": self.model_yaml_config["handler"]["greeting"],
                 "model": type(self.model).__name__} for row in data.tolist()]

    def describe_handle(self):
        return {"greeting": self.model_yaml_config["handler"]["greeting"]}
'''

CONFIGURED_YAML = """
handler:
  profile: true
  greeting: hello
pt2:
  compile:
    enable: true
    backend: eager
"""


def configured_files(folder: Path) -> dict:
    """A Linear model computing 2x + 1, its model file and the configured handler."""
    import torch

    model = eager_model(folder, "doubler", CONFIGURED_MODEL)
    with torch.no_grad():
        model.linear.weight.fill_(2.0)
        model.linear.bias.fill_(1.0)
    torch.save(model.state_dict(), folder / "doubler.pt")
    return {"doubler.py": folder / "doubler.py", "doubler.pt": folder / "doubler.pt",
            "configured.py": CONFIGURED_HANDLER, "model-config.yaml": CONFIGURED_YAML}


def test_timed_steps_yaml_config_compile_and_describe(server, tmp_path):
    build_mar(server.store, "configured", configured_files(tmp_path),
              manifest("configured", "configured.py", serializedFile="doubler.pt",
                       modelFile="doubler.py", configFile="model-config.yaml"))
    register(server, "configured")
    answer = requests.post(f"{server.inference}/predictions/configured", data="3")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"y": 7.0, "greeting": "hello", "model": "OptimizedModule"}
    scraped = requests.get(f"{server.metrics}/metrics").text
    # preprocess and BaseHandler's inference are @timed; the overridden postprocess is not.
    assert "ts_handler_preprocess" in scraped and "ts_handler_inference" in scraped
    assert "ts_handler_postprocess" not in scraped
    described = requests.get(f"{server.management}/models/configured",
                             params={"customized": "true"})
    assert described.status_code == 200, described.text
    assert described.json()[0]["customizedMetadata"] == {"greeting": "hello"}


#: TorchServe's micro-batching example, shrunk: the handler's `handle` is a MicroBatching
#: (made in `__init__`, which does not call BaseHandler's), set up from model-config.yaml.
MICRO_HANDLER = '''
from ts.handler_utils.micro_batching import MicroBatching
from ts.torch_handler.base_handler import BaseHandler


class Micro(BaseHandler):
    def __init__(self):
        self.handle = MicroBatching(self)

    def initialize(self, ctx):
        config = ctx.model_yaml_config["micro_batching"]
        self.handle.parallelism = config["parallelism"]
        self.handle.micro_batch_size = config["micro_batch_size"]
        self.initialized = True

    def preprocess(self, data):
        return [(row.get("data") or row.get("body")).decode() for row in data]

    def inference(self, data):
        return [text.upper() for text in data]

    def postprocess(self, data):
        return [{"text": text, "micro_batch": self.handle.get_micro_batch_idx(),
                 "size": len(data)} for text in data]
'''

MICRO_YAML = """
micro_batching:
  micro_batch_size: 2
  parallelism:
    preprocess: 2
    inference: 1
    postprocess: 2
"""


def test_micro_batching_splits_a_batch_in_order(server):
    build_mar(server.store, "micro", {"micro.py": MICRO_HANDLER, "model-config.yaml": MICRO_YAML},
              manifest("micro", "micro.py", configFile="model-config.yaml"))
    register(server, "micro", batch_size=4, max_batch_delay=3000)
    words = ["one", "two", "three", "four"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(
            lambda word: requests.post(f"{server.inference}/predictions/micro", data=word),
            words))
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    got = [a.json() for a in answers]
    assert [g["text"] for g in got] == [w.upper() for w in words]
    assert [g["size"] for g in got] == [2] * 4
    assert sorted(g["micro_batch"] for g in got) == [0, 0, 1, 1]


@pytest.fixture
def profiled(start_server, tmp_path):
    """A server with ENABLE_TORCH_PROFILER=true (and no Captum), the MNIST model registered
    under a fresh name, and the profiler's output folder for it, removed afterwards."""
    name = f"profiled_{uuid.uuid4().hex[:8]}"
    output = Path("/tmp/pytorch_profiler") / name
    started = start_server(env={"ENABLE_TORCH_PROFILER": "true"})
    build_mar(started.store, name,
              {"mnist.pt": mnist_model(tmp_path / "mnist.pt"), "mnist_handler.py": MNIST_HANDLER},
              manifest(name, "mnist_handler.py", serializedFile="mnist.pt"))
    register(started, name)
    yield started, name, output
    shutil.rmtree(output, ignore_errors=True)


def test_profiler_writes_a_trace_per_request_and_explaining_needs_captum(profiled):
    server, name, output = profiled
    answer = requests.post(f"{server.inference}/predictions/{name}", **image_request(mnist_digit()))
    assert answer.status_code == 200, answer.text
    assert answer.json()["shape"] == [1, 1, 28, 28]
    (trace,) = output.glob("*.pt.trace.json")
    steps = {event.get("name") for event in json.loads(trace.read_text())["traceEvents"]}
    assert {"preprocess", "inference", "postprocess"} <= steps
    failed = requests.post(f"{server.inference}/explanations/{name}",
                           **image_request(mnist_digit()))
    assert failed.status_code == 500 and "explanations need Captum" in failed.text, failed.text


def profiler_override_handler(output: Path) -> str:
    """MNIST_HANDLER with its own `profiler_args`, traces written to `output`, as
    test_pytorch_profiler.py's `resnet_profiler_override.py`."""
    return ("from torch.profiler import ProfilerActivity, tensorboard_trace_handler\n"
            + MNIST_HANDLER.replace("    def preprocess", f"""    def __init__(self):
        super().__init__()
        self.profiler_args = {{"activities": [ProfilerActivity.CPU], "record_shapes": True,
                              "on_trace_ready": tensorboard_trace_handler({str(output)!r})}}

    def preprocess""", 1))


def test_the_handlers_profiler_arguments_and_one_trace_per_batch_of_three_workers(profiled,
                                                                                   tmp_path):
    """test_pytorch_profiler.py's test_batch_input: three workers, batches of up to 4 within
    5 s, two requests at once: one batch, so one trace, where the handler's arguments say."""
    server, _, _ = profiled
    output = tmp_path / "traces"
    build_mar(server.store, "override",
              {"mnist.pt": mnist_model(tmp_path / "mnist.pt"),
               "h.py": profiler_override_handler(output)},
              manifest("override", "h.py", serializedFile="mnist.pt"))
    register(server, "override", initial_workers=3, batch_size=4, max_batch_delay=5000)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(
            lambda _: requests.post(f"{server.inference}/predictions/override",
                                    **image_request(mnist_digit()), timeout=60), range(2)))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert [a.json()["shape"] for a in answers] == [[2, 1, 28, 28]] * 2
    assert len(list(output.glob("*.pt.trace.json"))) == 1
    assert not (Path("/tmp/pytorch_profiler") / "override").exists()


def test_an_uncovered_ts_module_says_to_install_torchserve(server):
    handler = "from ts.metrics.metric import Metric\n\n\ndef handle(data, context):\n    return data\n"
    build_mar(server.store, "uncovered", {"uncovered.py": handler},
              manifest("uncovered", "uncovered.py"))
    answer = requests.post(f"{server.management}/models",
                           params={"url": "uncovered.mar", "initial_workers": 1,
                                   "synchronous": "true"})
    assert answer.status_code == 500, answer.text
    message = answer.json()["message"]
    assert "ts.metrics.metric is not part of torchyard's stand-in" in message
    assert "pip install torchserve==0.12.0" in message
