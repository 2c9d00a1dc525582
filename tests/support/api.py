"""Small clients of the management API and the JSON error check the model tests share."""

import time

import requests


def register(server, **params):
    """POST /models with `params`, synchronous and with one worker unless they say otherwise
    (TorchServe starts none without `initial_workers`)."""
    params.setdefault("synchronous", "true")
    params.setdefault("initial_workers", "1")
    return requests.post(f"{server.management}/models", params=params)


def register_archive(server, name, workers=1):
    """Registers `NAME.mar` from the store with `workers` workers, synchronously; asserts a 200."""
    answer = requests.post(f"{server.management}/models", params={
        "url": f"{name}.mar", "initial_workers": workers, "synchronous": "true"}, timeout=300)
    assert answer.status_code == 200, answer.text


def scale(server, name, workers, timeout=300):
    """Scales model `name` to exactly `workers` workers, synchronously; asserts a 200."""
    answer = requests.put(f"{server.management}/models/{name}", params={
        "min_worker": workers, "max_worker": workers, "synchronous": "true"}, timeout=timeout)
    assert answer.status_code == 200, answer.text


def describe(server, name):
    """The description of the default version of model `name`."""
    return requests.get(f"{server.management}/models/{name}").json()[0]


def ready_pids(server, model):
    """The pids of the READY workers of model `model`'s default version."""
    workers = requests.get(f"{server.management}/models/{model}", timeout=10).json()[0]["workers"]
    return [w["pid"] for w in workers if w["status"] == "READY" and w["pid"]]


def wait_ready(server, model, count, not_in=(), timeout=60):
    """Waits for `count` READY workers of `model`, none of them a pid in `not_in`; their pids."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = ready_pids(server, model)
        if len(pids) == count and not set(pids) & set(not_in):
            return pids
        time.sleep(0.1)
    raise AssertionError(f"{model} did not get {count} new READY workers")


def assert_error(answer, code, kind):
    """Asserts `answer` is TorchServe's JSON error `{code, type, message}`; returns its body."""
    assert answer.status_code == code, answer.text
    body = answer.json()
    assert body["code"] == code and body["type"] == kind and body["message"]
    return body


def ts_error(answer, code, message=None, kind=None):
    """Asserts a TorchServe error body with `code` (and `message`, `kind` when given) and
    returns its message."""
    assert answer.status_code == code, answer.text
    body = answer.json()
    assert body["code"] == code
    if kind:
        assert body["type"] == kind
    if message is not None:
        assert body["message"] == message
    return body["message"]


def ts_status(answer):
    """The `status` text of a 200 answer."""
    assert answer.status_code == 200, answer.text
    return answer.json()["status"]
