"""Resolving and initialising handlers: functions, classes, `file.py:fn`, `module:fn`, failures."""

import json

from worker_harness import body, request, write_source

FUNCTION = """
calls = []

def handle(data, context):
    calls.append(data)
    if data is None:
        return None
    return [{"calls": [c if c is None else len(c) for c in calls], "batch": len(data)}]
"""

CLASS = """
import json
from collections import OrderedDict  # an imported class does not count


class Doubler:
    def __init__(self):
        self.context = None

    def initialize(self, context):
        self.context = context

    def handle(self, data, context):
        assert context is self.context
        return [{"double": row["body"] * 2,
                 "system": context.system_properties,
                 "manifest": context.manifest,
                 "yaml": context.model_yaml_config,
                 "model_name": context.model_name} for row in data]
"""


def test_function_handler_is_called_with_none_at_load(loaded):
    worker = loaded(FUNCTION)
    reply, blobs = worker.predict(request(body(b"{}", "application/json")))
    assert reply["kind"] == "predicted"
    assert json.loads(blobs[0]) == {"calls": [None, 1], "batch": 1}


def test_class_handler_is_instantiated_and_initialized(loaded, model_dir):
    worker = loaded(CLASS, batch_size=8, gpu_id=0, model_name="double",
                    model_yaml_config={"handler": {"scale": 2}}, limit_max_image_pixels=False,
                    manifest={"model": {"modelName": "double"}})
    reply, blobs = worker.predict(request(body(b"21", "application/json")))
    assert reply["responses"][0]["content_type"] == "application/json"
    assert json.loads(blobs[0]) == {
        "double": 42,
        "system": {"model_dir": str(model_dir), "gpu_id": 0, "batch_size": 8,
                   "server_name": "torchyard", "server_version": "0.1.0",
                   "limit_max_image_pixels": False},
        "manifest": {"model": {"modelName": "double"}},
        "yaml": {"handler": {"scale": 2}},
        "model_name": "double",
    }


NAMED_FUNCTIONS = """
loaded_with = []

def first(data, context):
    loaded_with.append(data)
    return data and [f"first {row['body']} after {loaded_with[0]}" for row in data]

def second(data, context):
    return data and [f"second {row['body']}" for row in data]
"""


def test_file_function_handler(loaded):
    worker = loaded(NAMED_FUNCTIONS, handler="handler.py:first")
    reply, blobs = worker.predict(request(body(b"x", "text/plain")))
    assert reply["responses"][0]["content_type"] == "text/plain; charset=utf-8"
    assert blobs == [b"first x after None"]


def test_module_function_handler_from_a_package(start_worker, model_dir):
    write_source(model_dir, "pkg/__init__.py", "")
    write_source(model_dir, "pkg/named.py", NAMED_FUNCTIONS)
    worker = start_worker()
    assert worker.load("pkg.named:second", model_dir)["kind"] == "loaded"
    assert worker.predict(request(body(b"y", "text/plain")))[1] == [b"second y"]


def test_handler_file_in_a_sub_folder(start_worker, model_dir):
    write_source(model_dir, "code/deep_handler.py", FUNCTION)
    worker = start_worker()
    assert worker.load("code/deep_handler.py", model_dir)["kind"] == "loaded"
    reply, blobs = worker.predict(request(body(b"1", "application/json")))
    assert json.loads(blobs[0])["calls"] == [None, 1]


def _load_error(start_worker, model_dir, handler):
    worker = start_worker()
    reply = worker.load(handler, model_dir)
    assert reply["kind"] == "error" and reply["status"] == 500, reply
    assert reply["type"] == "InternalServerException"
    assert worker.close() == 0
    return reply["message"], worker.log()


def test_load_failures_are_reported(start_worker, model_dir):
    message, _ = _load_error(start_worker, model_dir, "missing.py")
    assert message.startswith("HandlerLoadError: handler file") and "does not exist" in message

    write_source(model_dir, "raises.py", "raise RuntimeError('broken at import')\n")
    message, log = _load_error(start_worker, model_dir, "raises.py")
    assert message == "RuntimeError: broken at import"
    assert "Traceback" in log and "broken at import" in log

    write_source(model_dir, "two.py", "class A:\n    pass\n\nclass B:\n    pass\n")
    message, _ = _load_error(start_worker, model_dir, "two.py")
    assert "exactly one class; it defines 2 (A, B)" in message

    write_source(model_dir, "fn.py", "def handle(data, context):\n    pass\n")
    message, _ = _load_error(start_worker, model_dir, "fn.py:nope")
    assert "has no function 'nope'" in message

    write_source(model_dir, "init_fails.py", """
        class H:
            def initialize(self, context):
                raise ValueError("no weights")

            def handle(self, data, context):
                return data
    """)
    message, _ = _load_error(start_worker, model_dir, "init_fails.py")
    assert message == "ValueError: no weights"

    message, _ = _load_error(start_worker, model_dir, "no_such_handler")
    assert "'no_such_handler' is neither a module" in message
    assert "ts.torch_handler.no_such_handler cannot be imported" in message


def test_a_failed_load_can_be_retried(start_worker, model_dir):
    worker = start_worker()
    assert worker.load("later.py", model_dir)["kind"] == "error"
    write_source(model_dir, "later.py", FUNCTION)
    assert worker.load("later.py", model_dir)["kind"] == "loaded"


def test_handler_file_named_like_an_imported_module_is_loaded(start_worker, model_dir):
    write_source(model_dir, "json.py", FUNCTION)
    worker = start_worker()
    assert worker.load("json.py", model_dir)["kind"] == "loaded"
    # The worker decodes this JSON body with the standard library's json, which kept its name.
    reply, blobs = worker.predict(request(body(b"1", "application/json")))
    assert json.loads(blobs[0])["calls"] == [None, 1]
