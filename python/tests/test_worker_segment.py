"""A worker loaded with a fused `segment` of workflow nodes: each request goes through every
function in turn, each node with its own context, module copy, tries and timeout; a model's
worker runs its segment around the handler for the requests that ask for it."""

from worker_harness import body, request, write_source

CHAIN = """
import time

calls = []


def first(data, context):
    if data is None:
        return None
    calls.append(len(data))
    return [{"got": bytes(row["body"]).decode(), "model": context.model_name} for row in data]


def second(data, context):
    if data is None:
        return None
    calls.append(len(data))
    for idx, row in enumerate(data):
        if b"bad" in bytes(row["body"]):
            context.set_response_status(422, "no", idx)
    return [bytes(row["body"]).upper() for row in data]


def counted(data, context):
    if data is None:
        return None
    return [len(calls)] * len(data)


def wrong_count(data, context):
    if data is None:
        return None
    return []


def sleepy(data, context):
    if data is None:
        return None
    time.sleep(5)
"""


def node(name, attempts=1, timeout_ms=10000):
    return {"node": name, "model_name": f"wf__{name}", "handler": f"handler.py:{name}",
            "manifest": {}, "attempts": attempts, "timeout_ms": timeout_ms}


def test_requests_run_through_the_chain_and_fail_alone(loaded):
    worker = loaded(CHAIN, segment=[node("first"), node("second", attempts=2), node("counted")])
    reply, blobs = worker.predict(request(body(b"ok")), request(body(b"bad")),
                                  request(body(b"fine")))
    good, bad, fine = reply["responses"]
    assert [bytes(b) for b in blobs] == [b"0", b'{"GOT": "BAD", "MODEL": "WF__FIRST"}', b"0"]
    # `counted` has a module of its own: it saw none of the calls of `first` and `second`.
    assert good["status"] == 200 and good["content_type"] == "application/json"
    assert [retries for _, retries in good["trace"]["nodes"]] == [0, 0, 0]
    assert bad["status"] == 422 and bad["trace"]["failed"] == {"message": None}
    assert [retries for _, retries in bad["trace"]["nodes"]] == [0, 1]
    assert fine["blob"] == 2 and fine["trace"]["failed"] is None


def test_a_try_that_breaks_fails_its_batch_with_the_reason(loaded):
    worker = loaded(CHAIN, segment=[node("first"), node("wrong_count", attempts=2)])
    reply, _ = worker.predict(request(body(b"a")), request(body(b"b")))
    for response in reply["responses"]:
        assert response["status"] == 500
        assert response["trace"]["failed"] == {
            "message": "handler returned 0 outputs for a batch of 2 requests"}
        assert [retries for _, retries in response["trace"]["nodes"]] == [0, 1]


def test_a_try_past_its_timeout_is_interrupted(loaded):
    worker = loaded(CHAIN, segment=[node("first", timeout_ms=100),
                                    node("sleepy", timeout_ms=200)])
    reply, _ = worker.predict(request(body(b"a")))
    (response,) = reply["responses"]
    assert response["trace"]["failed"] == {"message": "timed out after 200 ms"}
    micros = [spent for spent, _ in response["trace"]["nodes"]]
    assert micros[1] < 1_000_000, micros
    again, _ = worker.predict(request(body(b"b")))
    assert again["responses"][0]["trace"]["failed"] == {"message": "timed out after 200 ms"}


AROUND_A_MODEL = """
def pre(data, context):
    if data is None:
        return None
    return ["pre(%s)" % bytes(row["body"]).decode() for row in data]


def model(data, context):
    if data is None:
        return None
    for idx, row in enumerate(data):
        if b"boom" in bytes(row["body"]):
            context.set_response_status(500, "boom", idx)
    return ["%s(%s)" % (context.model_name, bytes(row["body"]).decode()) for row in data]


def post(data, context):
    if data is None:
        return None
    return [b"post:" + bytes(row["body"]) for row in data]
"""


def test_a_model_runs_its_segment_for_the_requests_that_ask_and_its_handler_for_the_rest(loaded):
    model = {**node("m", attempts=2), "model": True, "handler": "handler.py:model"}
    worker = loaded(AROUND_A_MODEL, handler="handler.py:model",
                    segment=[node("pre"), model, node("post")])
    reply, blobs = worker.predict(request(body(b"direct")), request(body(b"x"), segment=True),
                                  request(body(b"boom"), segment=True),
                                  request(body(b"y"), segment=True))
    direct, fused, failed, other = reply["responses"]
    answers = [bytes(blobs[r["blob"]]) for r in (direct, fused, other)]
    # The handler's own context (model_name "m") runs the model node in both.
    assert answers == [b"m(direct)", b"post:m(pre(x))", b"post:m(pre(y))"]
    assert "trace" not in direct and direct["content_type"].startswith("text/plain")
    assert [retries for _, retries in fused["trace"]["nodes"]] == [0, 0, 0]
    assert failed["status"] == 500 and failed["trace"]["failed"] == {"message": None}
    assert [retries for _, retries in failed["trace"]["nodes"]] == [0, 1]
    alone, alone_blobs = worker.predict(request(body(b"z")))
    assert bytes(alone_blobs[0]) == b"m(z)" and "trace" not in alone["responses"][0]


def test_functions_from_a_handler_file_named_as_the_models_load_beside_it(loaded, tmp_path):
    """The workflow's handler.py and the model's handler.py: each node gets its own."""
    write_source(tmp_path / "wf", "handler.py", AROUND_A_MODEL.replace("\"pre(", "\"wf_pre("))
    functions = {"model_dir": str(tmp_path / "wf")}
    model = {**node("m"), "model": True, "handler": "handler.py:model"}
    worker = loaded(AROUND_A_MODEL, handler="handler.py:model",
                    segment=[{**node("pre"), **functions}, model, {**node("post"), **functions}])
    reply, blobs = worker.predict(request(body(b"x"), segment=True), request(body(b"y")))
    assert [bytes(b) for b in blobs] == [b"post:m(wf_pre(x))", b"m(y)"], worker.log()
