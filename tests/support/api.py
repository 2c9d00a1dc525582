"""Small clients of the management API and the JSON error check the model tests share."""

import requests


def register(server, **params):
    """POST /models with `params`, synchronous and with one worker unless they say otherwise
    (TorchServe starts none without `initial_workers`)."""
    params.setdefault("synchronous", "true")
    params.setdefault("initial_workers", "1")
    return requests.post(f"{server.management}/models", params=params)


def describe(server, name):
    """The description of the default version of model `name`."""
    return requests.get(f"{server.management}/models/{name}").json()[0]


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
