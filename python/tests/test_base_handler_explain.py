"""The stand-in BaseHandler sends a request with the header `explain: True` to explain_handle."""

import json

from worker_harness import body, request

HANDLER = """
from ts.torch_handler.base_handler import BaseHandler


class Explaining(BaseHandler):
    def initialize(self, context):
        self.initialized = True

    def preprocess(self, data):
        return [row["body"] for row in data]

    def inference(self, data, *args, **kwargs):
        return [{"predicted": value} for value in data]

    def postprocess(self, data):
        return data

    def get_insights(self, tensor_data, raw_data, target):
        return [{"explained": tensor_data, "raw": raw_data, "target": target}]
"""


def test_the_explain_header_calls_explain_handle(loaded):
    worker = loaded(HANDLER)
    _, blobs = worker.predict(request(body(b"[1, 2]", "application/json"),
                                      headers=[("explain", "True")]))
    assert json.loads(blobs[0]) == {"explained": [[1, 2]], "raw": [1, 2], "target": 0}


def test_the_target_parameter_reaches_get_insights(loaded):
    worker = loaded(HANDLER)
    _, blobs = worker.predict(request(body(b"7", "application/json"), ("target", "application/json", b"3"),
                                      headers=[("explain", "True")]))
    assert json.loads(blobs[0])["target"] == 3


def test_without_the_header_the_handler_predicts(loaded):
    worker = loaded(HANDLER)
    _, blobs = worker.predict(request(body(b"5", "application/json"),
                                      headers=[("explain", "False")]))
    assert json.loads(blobs[0]) == {"predicted": 5}
