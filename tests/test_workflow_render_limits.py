"""Drawing a workflow as SVG costs the server no responsiveness: the layout runs off the async
threads (a `/ping` sent meanwhile answers at once), and a workflow whose layout is over the
budget is refused with 400 before any work (DOT and Mermaid still draw it)."""

import concurrent.futures
import time

import pytest
import requests

from support.archives import war


def dense(count):
    """A spec and handler of `count` function nodes, each feeding every later one: layered
    layouts bend each long edge once per rank it crosses, so the work grows as count³."""
    spec = "models:\n  min-workers: 1\n  max-workers: 1\ndag:\n" + "".join(
        f"  n{i}: [{', '.join(f'n{j}' for j in range(i + 1, count))}]\n"
        for i in range(count - 1))
    handler = "".join(f"def n{i}(data, context):\n    return data\n" for i in range(count))
    return spec, handler


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    # 12 nodes: 232 boxes, within the budget of 300 and seconds of layout; 20: 1160, over it.
    for count in (12, 20):
        war(store, f"dense{count}", *dense(count))
    server = start_module_server(store=store)
    for count in (12, 20):
        answer = requests.post(f"{server.management}/workflows",
                               params={"url": f"dense{count}.war"})
        assert answer.status_code == 200, answer.text
    return server


def draw(server, name, fmt="svg"):
    return requests.get(f"{server.management}/workflows/{name}", params={"format": fmt},
                        timeout=120)


def test_ping_answers_at_once_while_big_drawings_are_laid_out(server):
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        drawings = [pool.submit(draw, server, "dense12") for _ in range(6)]
        time.sleep(0.3)
        waits = []
        while not all(d.done() for d in drawings):
            start = time.monotonic()
            assert requests.get(f"{server.inference}/ping", timeout=30).ok
            waits.append(time.monotonic() - start)
            time.sleep(0.1)
        answers = [d.result() for d in drawings]
    assert waits, "the drawings were done before /ping was asked"
    assert max(waits) < 0.5, f"/ping waited {max(waits):.2f}s behind the drawings"
    for answer in answers:
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "image/svg+xml"
        assert "n11" in answer.text


def test_a_drawing_over_the_budget_is_refused_at_once(server):
    start = time.monotonic()
    answer = draw(server, "dense20")
    assert time.monotonic() - start < 2
    assert answer.status_code == 400
    body = answer.json()
    assert body["code"] == 400 and body["type"] == "BadRequestException"
    assert "1160 boxes" in body["message"] and "more than 300" in body["message"]
    assert "format=dot" in body["message"]
    for fmt in ("dot", "mermaid"):
        assert draw(server, "dense20", fmt).status_code == 200
