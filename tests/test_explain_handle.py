"""The explanation paths reach `explain_handle` of a BaseHandler subclass (TorchServe's
BaseHandler.handle does that for requests with the header `explain: True`)."""

import pytest
import requests

from support.archives import build_mar, manifest

#: Predicts and explains distinguishably; its explain_handle sees the preprocessed batch.
HANDLER = """
from ts.torch_handler.base_handler import BaseHandler


class Explaining(BaseHandler):
    def initialize(self, context):
        self.initialized = True

    def preprocess(self, data):
        return [row.get("data") or row.get("body") for row in data]

    def inference(self, data, *args, **kwargs):
        return data

    def postprocess(self, data):
        return ["predicted " + value.decode() for value in data]

    def explain_handle(self, data_preprocess, raw_data):
        return ["explained " + value.decode() for value in data_preprocess]
"""


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    store = tmp_path_factory.mktemp("explain") / "store"
    build_mar(store, "explaining", {"service.py": HANDLER}, manifest("explaining", "service.py"))
    started = start_module_server(store=store)
    answer = requests.post(f"{started.management}/models",
                           params={"url": "explaining.mar", "initial_workers": 1,
                                   "synchronous": "true"})
    assert answer.status_code == 200, answer.text
    return started


@pytest.mark.parametrize("path", ["/explanations/explaining", "/v1/models/explaining:explain",
                                  "/v2/models/explaining/explain"])
def test_explanation_paths_call_explain_handle(server, path):
    answer = requests.post(server.inference + path, data={"data": "x"})
    assert (answer.status_code, answer.text) == (200, "explained x")


@pytest.mark.parametrize("path", ["/predictions/explaining", "/v1/models/explaining:predict",
                                  "/v2/models/explaining/infer"])
def test_prediction_paths_do_not(server, path):
    answer = requests.post(server.inference + path, data={"data": "x"})
    assert (answer.status_code, answer.text) == (200, "predicted x")
