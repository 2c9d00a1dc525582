"""TorchServe's own API tests for models (frontend ModelServerTest.java), against torchyard:
the same archives, the same requests, the same answers. The reference archives come from a
TorchServe checkout (TORCHSERVE_REFERENCE, by default ../shared/reference/torchserve) and
are copied into the test's model store; the suite is skipped without them. Like the Java
tests, the server runs with allowed_urls=file://.*|http(s)?://.* and the model API enabled."""

import functools
import shutil
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from support.archives import build_mar, manifest, mnist_mars
from support.server import free_port
from support.api import ts_error as error, ts_status as status
from support.reference import ARCHIVES, needs_reference

MODELS = ARCHIVES / "models"

pytestmark = needs_reference

#: The configuration TorchServe's tests run with (config.properties), as far as it matters here.
PROPERTIES = {"allowed_urls": "file://.*|http(s)?://.*", "load_models": "noop.mar"}

FORM = {"data": "test"}


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    store = tmp_path_factory.mktemp("ts") / "store"
    shutil.copytree(MODELS, store)
    mnist_mars(store)
    build_mar(store, "headers", {"service.py": HEADERS_HANDLER}, manifest("headers", "service.py"))
    started = start_module_server(PROPERTIES, store=store)
    wait_for_workers(started, "noop")
    return started


#: Answers with the request headers TorchServe's handlers look at.
HEADERS_HANDLER = """
def handle(data, context):
    if data is None:
        return None
    return [str(context.get_request_header(i, "explain")) for i in range(len(data))]
"""


def wait_for_workers(server, name):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = requests.get(f"{server.management}/models/{name}")
        if answer.ok and any(w["status"] == "READY" for w in answer.json()[0]["workers"]):
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} has no ready worker")


def register(server, url, name=None, workers=None, **extra):
    """TestUtils.registerModel: synchronous, with one initial worker when `workers` is set."""
    params = {"url": url, "synchronous": "true", **extra}
    if name:
        params["model_name"] = name
    if workers is not None:
        params["initial_workers"] = workers
    return requests.post(f"{server.management}/models", params=params)




def test_every_prediction_door_reaches_the_model(server):
    base = server.inference
    for path in ["/predictions/noop", "/explanations/noop", "/v1/models/noop:predict",
                 "/v1/models/noop:explain", "/v2/models/noop/infer", "/v2/models/noop/explain",
                 "/models/noop/invoke", "/invocations?model_name=noop"]:
        answer = requests.post(base + path, data=FORM)
        assert (answer.status_code, answer.text) == (200, "OK"), path
    # testPredictionsBinary / testPredictionsJson
    assert requests.post(f"{base}/predictions/noop", data=b"test",
                         headers={"Content-Type": "application/octet-stream"}).text == "OK"
    assert requests.post(f"{base}/predictions/noop", json={"data": "test"}).text == "OK"
    # testInvocationsMultipart / testModelsInvokeMultipart: the model named in a form field
    files = {"model_name": (None, "noop"), "data": ("d", b"test")}
    assert requests.post(f"{base}/invocations", files=files).text == "OK"
    assert requests.post(f"{base}/models/noop/invoke", files={"data": ("d", b"x")}).text == "OK"
    # /invocations without a name serves the only model loaded at start
    assert requests.post(f"{base}/invocations", data=FORM).text == "OK"
    # testLegacyPredict
    assert requests.get(f"{base}/noop/predict?data=test").text == "OK"
    # curl -T: PUT with a raw body
    assert requests.put(f"{base}/predictions/noop", data=b"test").text == "OK"


def test_explanations_reach_the_handler_flagged_as_explain(server):
    assert status(register(server, "headers.mar", workers=1)).endswith("1 initial workers")
    base = server.inference
    for path in ["/explanations/headers", "/v1/models/headers:explain",
                 "/v2/models/headers/explain"]:
        assert requests.post(base + path, data=FORM).text == "True", path
    for path in ["/predictions/headers", "/v1/models/headers:predict",
                 "/v2/models/headers/infer"]:
        assert requests.post(base + path, data=FORM).text == "None", path


def test_unknown_paths_methods_and_models(server):
    inference, management = server.inference, server.management
    not_found = "Requested resource is not found, please refer to API document."
    not_allowed = "Requested method is not allowed, please refer to API document."
    error(requests.get(f"{inference}/"), 405, not_allowed)  # testInvalidRootRequest
    error(requests.get(f"{inference}/InvalidUrl"), 404, not_found)
    error(requests.get(f"{inference}/predictions"), 404, not_found)
    error(requests.get(f"{management}/InvalidUrl"), 404, not_found)
    error(requests.put(f"{management}/models"), 405, not_allowed)
    error(requests.post(f"{management}/models/noop"), 405, not_allowed)
    missing = "Model not found: InvalidModel"
    error(requests.get(f"{inference}/predictions/InvalidModel"), 404, missing,
          "ModelNotFoundException")
    error(requests.options(f"{inference}/predictions/InvalidModel"), 404, missing)
    error(requests.get(f"{management}/models/InvalidModel"), 404, missing)
    error(requests.put(f"{management}/models/fake"), 404, "Model not found: fake")
    error(requests.delete(f"{management}/models/fake"), 404, "Model not found: fake")


def test_registration_without_workers_and_scaling(server):
    m = server.management
    assert status(register(server, "noop.mar", "noop_v1.0")) == (
        'Model "noop_v1.0" Version: 1.11 registered with 0 initial workers. '
        "Use scale workers API to add workers for the model.")
    described = requests.get(f"{m}/models/noop_v1.0").json()[0]
    assert described["minWorkers"] == 0
    assert described["jobQueueStatus"] == {"remainingCapacity": 100, "pendingRequests": 0}
    # testDescribeModelCustomizedNoWorker
    error(requests.get(f"{m}/models/noop_v1.0", params={"customized": "true"}), 503)
    error(register(server, "noop.mar", "noop_v1.0", runtime="python", synchronous="false"), 409,
          "Model version 1.11 is already registered for model noop_v1.0")
    scale = f"{m}/models/noop_v1.0"
    assert status(requests.put(scale, params={"min_worker": 1, "synchronous": "true"})) == (
        "Workers scaled to 1 for model: noop_v1.0")
    assert status(requests.put(f"{scale}/1.11", params={"min_worker": 1,
                                                         "synchronous": "true"})) == (
        "Workers scaled to 1 for model: noop_v1.0, version: 1.11")
    error(requests.put(f"{scale}/1.3.1"), 404,
          "Model version: 1.3.1 does not exist for model: noop_v1.0")
    assert status(requests.delete(scale)) == 'Model "noop_v1.0" unregistered'


def test_versions_defaults_and_their_removal(server):
    m, i = server.management, server.inference
    assert status(register(server, "noop.mar", "noopversioned", workers=1)).startswith(
        'Model "noopversioned" Version: 1.11 registered with 1 initial workers')
    assert status(register(server, "noop_v2.mar", "noopversioned", workers=1)) == (
        'Model "noopversioned" Version: 1.2.1 registered with 1 initial workers')
    assert requests.get(f"{m}/models/noopversioned").json()[0]["modelVersion"] == "1.11"
    versions = [d["modelVersion"] for d in requests.get(f"{m}/models/noopversioned/all").json()]
    assert versions == ["1.2.1", "1.11"]
    customized = requests.get(f"{m}/models/noopversioned/all?customized=true").json()
    assert [d["modelVersion"] for d in customized] == ["1.2.1", "1.11"]
    missing = "Model version: 1.3.1 does not exist for model: noopversioned"
    error(requests.get(f"{m}/models/noopversioned/1.3.1"), 404, missing)
    error(requests.post(f"{i}/predictions/noopversioned/1.3.1", data=FORM), 404, missing)
    for path in ["/predictions/noopversioned/1.2.1", "/explanations/noopversioned/1.2.1"]:
        assert requests.post(i + path, data=FORM).text == "OK"
    assert status(requests.put(f"{m}/models/noopversioned/1.2.1/set-default")) == (
        'Default version successfully updated for model "noopversioned" to "1.2.1"')
    error(requests.put(f"{m}/models/noopversioned/3.3.3/set-default"), 404,
          "Model version 3.3.3 does not exist for model noopversioned")
    error(requests.delete(f"{m}/models/noopversioned/1.2.1"), 403,
          "Cannot remove default version for model noopversioned")
    error(requests.delete(f"{m}/models/noopversioned/1.3.1"), 404, missing)
    assert status(requests.delete(f"{m}/models/noopversioned/1.11")) == (
        'Model "noopversioned" unregistered')
    assert status(requests.delete(f"{m}/models/noopversioned/1.2.1")) == (
        'Model "noopversioned" unregistered')


def test_json_bodies_and_model_folders_in_the_store(server):
    post = lambda body: requests.post(f"{server.management}/models", data=body,  # noqa: E731
                                      headers={"Content-Type": "application/json"})
    body = "{'url':'%s', 'model_name':'%s', 'initial_workers':'1', 'synchronous':'true'}"
    assert status(post(body % ("noop.mar", "noopjson"))) == (
        'Model "noopjson" Version: 1.11 registered with 1 initial workers')
    folder = server.store / "noop_no_archive_no_version" / "noop"
    assert status(post(body % (f"{folder}/", "nakednv"))) == (
        'Model "nakednv" Version: 1.0 registered with 1 initial workers')
    folder = server.store / "noop_no_archive" / "noop"
    assert status(post(body % (f"{folder}/", "naked"))) == (
        'Model "naked" Version: 1.11 registered with 1 initial workers')
    assert requests.post(f"{server.inference}/predictions/naked", data=FORM).text == "OK"
    for name in ["noopjson", "nakednv", "naked"]:
        assert requests.delete(f"{server.management}/models/{name}").ok


def test_registration_errors(server):
    error(requests.post(f"{server.management}/models"), 400, "Parameter url is required.")
    error(register(server, "InvalidUrl", runtime="InvalidRuntime"), 400,
          "Invalid RuntimeType value: InvalidRuntime")
    error(register(server, "InvalidUrl"), 404, "Model not found in model store: InvalidUrl")
    error(register(server, "../fake.mar", synchronous="false"), 404,
          "Relative path is not allowed in url: ../fake.mar")
    port = free_port()
    for url in ["http://localhost:aaaa", f"http://localhost:{port}/fake.mar",
                f"https://localhost:{port}/fake.mar", "file:///InvalidUrl"]:
        error(register(server, url, synchronous="false"), 400,
              f"Failed to download archive from: {url}", "DownloadArchiveException")


def test_memory_errors_custom_codes_and_error_batches(server):
    m, i = server.management, server.inference
    error(register(server, "loading-memory-error.mar", "memory_error", workers=1), 507)
    assert requests.get(f"{m}/models/memory_error").status_code == 404
    assert status(register(server, "prediction-memory-error.mar", "pred-err", workers=1))
    assert requests.post(f"{i}/predictions/pred-err", data={"data": "invalid_output"}
                         ).status_code == 507
    assert status(requests.delete(f"{m}/models/pred-err"))
    assert status(register(server, "pred-custom-return-code.mar", "pred-custom-return-code",
                           workers=1))
    answer = requests.post(f"{i}/predictions/pred-custom-return-code",
                           data={"data": "invalid_output"})
    assert answer.status_code == 599
    assert status(requests.delete(f"{m}/models/pred-custom-return-code"))
    assert status(register(server, "error_batch.mar", "err_batch", workers=1)) == (
        'Model "err_batch" Version: 1.0 registered with 1 initial workers')
    answer = requests.post(f"{i}/predictions/err_batch", data={"data": "invalid_output"})
    assert (answer.status_code, answer.text) == (507, "Invalid response")
    assert status(requests.delete(f"{m}/models/err_batch"))


def test_failed_workers_name_their_cause(server):
    m = server.management
    assert status(register(server, "init-error.mar", "init-error")).startswith(
        'Model "init-error" Version: 1.0 registered with 0 initial workers')
    message = error(requests.put(f"{m}/models/init-error",
                                 params={"min_worker": 1, "synchronous": "true"}), 500)
    assert message.startswith("Failed to start workers for model init-error version: 1.0. ")
    assert "Cause: handler failed to load:" in message
    assert status(requests.delete(f"{m}/models/init-error"))


def test_default_workers_per_model_and_unregister_model_timeout(start_server):
    server = start_server({"default_workers_per_model": 1, "unregister_model_timeout": 0})
    shutil.copy(MODELS / "noop.mar", server.store)
    assert status(register(server, "noop.mar")) == (
        'Model "noop" Version: 1.11 registered with 1 initial workers')
    described = requests.get(f"{server.management}/models/noop").json()[0]
    assert described["minWorkers"] == 1
    error(requests.delete(f"{server.management}/models/noop"), 408,
          "Timed out while cleaning resources: noop")


@pytest.mark.parametrize("name", ["mnist", "mnist_scripted", "mnist_traced"])
def test_mnist_eager_scripted_and_traced_models(server, name):
    m, i = server.management, server.inference
    assert status(register(server, f"{name}.mar", name, workers=1)) == (
        f'Model "{name}" Version: 1.0 registered with 1 initial workers')
    for path in [f"/predictions/{name}", f"/v1/models/{name}:predict", f"/v2/models/{name}/infer"]:
        answer = requests.post(i + path, data=FORM)
        assert (answer.status_code, answer.text) == (200, "0"), path
    # explanations reach BaseHandler.explain_handle; the stand-in handler has no get_insights
    for path in [f"/explanations/{name}", f"/v1/models/{name}:explain",
                 f"/v2/models/{name}/explain"]:
        assert "get_insights" in error(requests.post(i + path, data=FORM), 500), path
    assert status(requests.delete(f"{m}/models/{name}")) == f'Model "{name}" unregistered'


def test_archives_from_urls_are_kept_in_the_store_until_unregistered(server, tmp_path):
    """testLoadModelFromFileURI / testLoadModelFromURL and their unregister tests."""
    shutil.copy(server.store / "mnist.mar", tmp_path / "mnist1.mar")
    url = f"file://{tmp_path}/mnist1.mar"
    assert status(register(server, url, "mnist1", workers=1)) == (
        'Model "mnist1" Version: 1.0 registered with 1 initial workers')
    assert (server.store / "mnist1.mar").is_file()
    assert status(requests.delete(f"{server.management}/models/mnist1"))
    assert not (server.store / "mnist1.mar").exists()

    shutil.copy(server.store / "noop.mar", tmp_path / "noop_remote.mar")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    site = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{site.server_port}/noop_remote.mar"
        assert status(register(server, url, "remote", workers=1)).startswith('Model "remote"')
    finally:
        site.shutdown()
    assert (server.store / "noop_remote.mar").is_file()
    assert requests.post(f"{server.inference}/predictions/remote", data=FORM).text == "OK"
    assert status(requests.delete(f"{server.management}/models/remote"))
    assert not (server.store / "noop_remote.mar").exists()


def test_customized_metadata_comes_from_the_handler(server):
    """testNoopCustomized: describe_handle's answer to a request flagged describe: True."""
    assert status(register(server, "noop-customized.mar", "noop-customized", workers=1))
    described = requests.get(f"{server.management}/models/noop-customized/1.0",
                             params={"customized": "true"}).json()
    assert described[0]["customizedMetadata"] == {"data1": "1", "data2": "2"}
    assert "customizedMetadata" not in requests.get(
        f"{server.management}/models/noop-customized").json()[0]
    assert status(requests.delete(f"{server.management}/models/noop-customized/1.0"))


def test_management_replies_match_torchserves(server):
    """The replies torchyard once answered its own way: the list under a trailing slash, the
    synchronous default and the asynchronous 202, and urls naming `..`."""
    m = server.management
    listed = requests.get(f"{m}/models/")
    assert listed.status_code == 200 and {"modelName": "noop", "modelUrl": "noop.mar"} in (
        listed.json()["models"])
    # Without `synchronous`, TorchServe waits for the workers.
    answer = requests.post(f"{m}/models", params={"url": "noop.mar", "model_name": "nosync",
                                                  "initial_workers": 1})
    assert status(answer) == 'Model "nosync" Version: 1.11 registered with 1 initial workers'
    assert requests.get(f"{m}/models/nosync").json()[0]["workers"][0]["status"] == "READY"
    answer = requests.post(f"{m}/models", params={"url": "noop.mar", "model_name": "async",
                                                  "initial_workers": 1, "synchronous": "false"})
    assert (answer.status_code, answer.json()) == (202, {"status": "Processing worker updates..."})
    for name in ("nosync", "async"):
        assert status(requests.delete(f"{m}/models/{name}"))
    for url in [f"file://{server.store}/../store/noop.mar", f"{server.store}/../store/noop.mar",
                "http://127.0.0.1:1/models/../noop.mar", "noop..mar"]:
        error(register(server, url), 404, f"Relative path is not allowed in url: {url}",
              "ModelNotFoundException")


def test_a_second_registration_from_a_url_downloads_nothing(server, tmp_path):
    shutil.copy(server.store / "noop.mar", tmp_path / "noop_twice.mar")
    fetched = []

    class Counting(SimpleHTTPRequestHandler):
        def do_GET(self):
            fetched.append(self.path)
            super().do_GET()

    site = ThreadingHTTPServer(("127.0.0.1", 0),
                               functools.partial(Counting, directory=str(tmp_path)))
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{site.server_port}/noop_twice.mar"
        assert status(register(server, url, "twice"))
        error(register(server, url, "twice"), 500, "Model file already exists noop_twice.mar",
              "InternalServerException")
        error(register(server, url, "twice_again"), 500,
              "Model file already exists noop_twice.mar", "InternalServerException")
        # A model registered from the store's own archive of that name counts too.
        shutil.copy(server.store / "noop.mar", server.store / "local_twice.mar")
        shutil.copy(server.store / "noop.mar", tmp_path / "local_twice.mar")
        assert status(register(server, "local_twice.mar", "local_twice"))
        error(register(server, f"http://127.0.0.1:{site.server_port}/local_twice.mar",
                       "local_again"), 500, "Model file already exists local_twice.mar",
              "InternalServerException")
    finally:
        site.shutdown()
    assert fetched == ["/noop_twice.mar"]
    assert status(requests.delete(f"{server.management}/models/twice"))
    assert status(requests.delete(f"{server.management}/models/local_twice"))


def test_the_model_api_off_answers_torchserves_405(start_server):
    server = start_server(args=("--disable-token-auth",))
    not_allowed = "Requested method is not allowed, please refer to API document."
    error(requests.post(f"{server.management}/models", params={"url": "noop.mar"}), 405,
          not_allowed, "MethodNotAllowedException")
    error(requests.delete(f"{server.management}/models/noop"), 405, not_allowed,
          "MethodNotAllowedException")


def test_a_snapshot_naming_a_missing_archive_stops_the_start(start_server, tmp_path):
    snapshot = ('{"name": "s", "modelCount": 1, "models": {"gone": {"1.0": {'
                '"defaultVersion": true, "marName": "gone.mar", "minWorkers": 1, '
                '"maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 100, '
                '"responseTimeout": 120}}}}')
    with pytest.raises(RuntimeError) as failed:
        start_server({"model_snapshot": snapshot})
    assert "Model archive file for model :gone, version :1.0 not found in model store" in str(
        failed.value)
