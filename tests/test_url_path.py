"""Whatever a `/predictions` or `/explanations` path has after the model's version reaches the
handler as the request header `url_path`, as TorchServe passes it (its test_url_path.py), so one
handler can serve, say, OpenAI-style routes."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from support.archives import build_mar, manifest

#: TorchServe's handler from test_url_path.py (answers each request with its `url_path`), which
#: explains the same way.
HANDLER = """
from ts.torch_handler.base_handler import BaseHandler


class UrlPath(BaseHandler):
    def initialize(self, context):
        self.context = context

    def preprocess(self, data):
        return [self.context.get_request_header(i, "url_path") for i in range(len(data))]

    def inference(self, data):
        return data

    def postprocess(self, data):
        return data

    def explain_handle(self, data_preprocess, raw_data):
        return data_preprocess
"""


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    store = tmp_path_factory.mktemp("url_path") / "store"
    build_mar(store, "some_model", {"handler.py": HANDLER},
              manifest("some_model", "handler.py", version="1.0"))
    started = start_module_server(store=store)
    answer = requests.post(f"{started.management}/models",
                           params={"url": "some_model.mar", "initial_workers": 1,
                                   "synchronous": "true", "batch_size": 2,
                                   "max_batch_delay": 2000})
    assert answer.status_code == 200, answer.text
    return started


def test_sub_paths_reach_the_handler_in_one_batch(server):
    paths = ["v1/chat/completions", "v1/completions"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(
            lambda path: requests.post(f"{server.inference}/predictions/some_model/1.0/{path}",
                                       json={"prompt": "Hello world"}), paths))
    assert [(a.status_code, a.text) for a in answers] == [(200, p) for p in paths]


@pytest.mark.parametrize("path", ["/predictions/some_model", "/predictions/some_model/1.0",
                                  "/predictions/some_model/1.0/"])
def test_url_path_is_empty_without_a_sub_path(server, path):
    answer = requests.post(server.inference + path, json={"prompt": "Hello world"})
    assert (answer.status_code, answer.text) == (200, "")


def test_explanations_pass_the_sub_path_too(server):
    answer = requests.get(f"{server.inference}/explanations/some_model/1.0/v1/explain")
    assert (answer.status_code, answer.text) == (200, "v1/explain")


def test_the_segment_after_the_model_is_its_version(server):
    """As in TorchServe, `/predictions/m/v1/chat` asks for version `v1` of `m`."""
    answer = requests.post(f"{server.inference}/predictions/some_model/v1/chat/completions",
                           json={"prompt": "Hello world"})
    assert answer.status_code == 404
    assert answer.json()["message"] == "Model version: v1 does not exist for model: some_model"


def test_legacy_predict_path_has_no_url_path(server):
    """TorchServe sets the header on `/predictions` and `/explanations` only: the handler's
    None comes back as JSON."""
    answer = requests.post(f"{server.inference}/some_model/predict", json={"prompt": "x"})
    assert (answer.status_code, answer.text) == (200, "null")
