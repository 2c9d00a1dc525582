"""The wire: frame layout, large bodies, message order, malformed frames and shutdown."""

import fcntl
import json
import os
import socket
import struct
import threading

import pytest
from worker_harness import body, request

from torchyard import framing, regions
from torchyard.regions import Regions

ECHO = """
def handle(data, context):
    if data is None:
        return None
    return [row["body"] for row in data]
"""


def _recv_exact(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "worker closed the socket"
        data += chunk
    return data


def _hand_frame(header: dict, *blobs: bytes) -> bytes:
    head = json.dumps(header).encode()
    rest = struct.pack(">I", len(head)) + head + b"".join(blobs)
    return struct.pack(">I", len(rest)) + rest


def _hand_read(sock):
    (total,) = struct.unpack(">I", _recv_exact(sock, 4))
    rest = _recv_exact(sock, total)
    (header_len,) = struct.unpack(">I", rest[:4])
    return json.loads(rest[4:4 + header_len]), rest[4 + header_len:]


def _hand_loaded(start_worker, model_dir, batch_size, source=ECHO):
    """A worker that loaded the handler `source` (echo) through frames built by hand."""
    (model_dir / "handler.py").write_text(source)
    worker = start_worker()
    load = {"kind": "load", "model_name": "m", "model_version": "1", "model_dir": str(model_dir),
            "handler": "handler.py", "manifest": {}, "batch_size": batch_size, "gpu_id": None,
            "limit_max_image_pixels": True, "model_yaml_config": {},
            "server_name": "torchyard", "server_version": "0.1.0"}
    worker.sock.sendall(_hand_frame(load))
    assert _hand_read(worker.sock) == ({"kind": "loaded", "pid": worker.process.pid}, b"")
    return worker


def test_frames_built_by_hand(start_worker, model_dir):
    worker = _hand_loaded(start_worker, model_dir, batch_size=2)

    predict = {"kind": "predict", "blobs": [3, 0, 5], "requests": [
        {"id": "a", "headers": [], "params": [{"name": "body", "content_type": None, "blob": 0}]},
        {"id": "b", "headers": [], "params": [{"name": "body", "blob": 2},
                                              {"name": "empty", "blob": 1}]}]}
    worker.sock.sendall(_hand_frame(predict, b"abc", b"", b"hello"))
    header, blobs = _hand_read(worker.sock)
    assert isinstance(header.pop("prediction_us"), int)
    assert header == {"kind": "predicted", "blobs": [3, 5], "responses": [
        {"status": 200, "reason": None, "content_type": "application/octet-stream", "blob": 0},
        {"status": 200, "reason": None, "content_type": "application/octet-stream", "blob": 1}]}
    assert blobs == b"abchello"


def test_json_params_in_the_header_reach_the_handler_parsed(start_worker, model_dir):
    # The server sends a small JSON body inside the header as `json`; the handler gets the same
    # value it gets from the body as a blob.
    worker = _hand_loaded(start_worker, model_dir, batch_size=2)
    value = {"inputs": [{"name": "x", "data": [1, 2.5]}], "id": None}
    text = json.dumps(value).encode()
    predict = {"kind": "predict", "blobs": [len(text)], "requests": [
        {"id": "a", "headers": [], "params": [
            {"name": "body", "content_type": "application/json", "json": value}]},
        {"id": "b", "headers": [], "params": [
            {"name": "body", "content_type": "application/json", "blob": 0}]}]}
    worker.sock.sendall(_hand_frame(predict, text))
    header, blobs = _hand_read(worker.sock)
    assert [r["content_type"] for r in header["responses"]] == ["application/json"] * 2
    first, second = header["blobs"]
    assert json.loads(blobs[:first]) == json.loads(blobs[first:]) == value


def test_predicts_sent_back_to_back_are_answered_in_order(start_worker, model_dir):
    # The server sends the next batch while the worker runs one: frames arrive together.
    worker = _hand_loaded(start_worker, model_dir, batch_size=1)
    texts = [f"request {i}".encode() for i in range(5)]
    worker.sock.sendall(b"".join(_hand_frame(
        {"kind": "predict", "blobs": [len(text)], "requests": [
            {"id": str(i), "headers": [], "params": [{"name": "body", "blob": 0}]}]}, text)
        for i, text in enumerate(texts)))
    assert [_hand_read(worker.sock)[1] for _ in texts] == texts


def test_each_reply_times_its_own_batch(start_worker, model_dir):
    # Batches sent back to back wait in the socket while the one before runs; the time the
    # worker reports (the server's PredictionTime) leaves that wait out.
    sleepy = "import time\n" + ECHO.replace("    return [", "    time.sleep(0.1)\n    return [")
    worker = _hand_loaded(start_worker, model_dir, batch_size=1, source=sleepy)
    frame = _hand_frame({"kind": "predict", "blobs": [1], "requests": [
        {"id": "a", "headers": [], "params": [{"name": "body", "blob": 0}]}]}, b"x")
    worker.sock.sendall(frame * 3)
    times = [_hand_read(worker.sock)[0]["prediction_us"] for _ in range(3)]
    assert all(100_000 <= took < 190_000 for took in times), times


def test_five_megabyte_body_round_trip(loaded):
    worker = loaded(ECHO)
    payload = os.urandom(5 * 1024 * 1024)
    reply, blobs = worker.predict(request(body(payload)), request(body(b"small")))
    assert reply["kind"] == "predicted"
    assert [bytes(b) for b in blobs] == [payload, b"small"]


def test_messages_out_of_order_are_errors(start_worker, loaded, model_dir):
    fresh = start_worker()
    reply, _ = fresh.predict(request(body(b"x")))
    assert reply["kind"] == "error" and reply["type"] == "InternalServerException"
    assert "not loaded" in reply["message"]

    worker = loaded(ECHO)
    reply = worker.load("handler.py", model_dir)
    assert reply == {"kind": "error", "status": 500, "type": "InternalServerException",
                     "message": "unexpected message 'load': the handler is loaded"}
    assert worker.predict(request(body(b"still serving")))[1] == [b"still serving"]


def test_worker_exits_0_when_the_socket_closes(start_worker, loaded):
    assert start_worker().close() == 0
    worker = loaded(ECHO)
    worker.predict(request(body(b"x")))
    assert worker.close() == 0
    log = worker.log()
    assert f"[pid {worker.process.pid}]" in log and "exiting" in log


def test_malformed_frame_makes_the_worker_exit_1(start_worker):
    worker = start_worker()
    header = b'{"kind":"load","blobs":[10]}'
    worker.sock.sendall(struct.pack(">II", 4 + len(header) + 3, len(header)) + header + b"abc")
    assert worker.process.wait(10) == 1
    assert "blob lengths add up to 10, the frame holds 3" in worker.log()


def test_read_frame_rejects_bad_lengths():
    for frame in (struct.pack(">II", 2, 0),                      # shorter than the header length
                  struct.pack(">II", 8, 9) + b"x" * 4,           # header longer than the frame
                  struct.pack(">II", 6, 2) + b"[]"):             # header not an object
        left, right = socket.socketpair()
        with left, right:
            left.sendall(frame)
            with pytest.raises(framing.ProtocolError):
                framing.read_frame(right)


def test_write_frame_refuses_oversized_frames_before_sending(monkeypatch):
    monkeypatch.setattr(framing, "MAX_FRAME", 100)
    left, right = socket.socketpair()
    with left, right:
        with pytest.raises(framing.ProtocolError, match="exceeds the limit"):
            framing.write_frame(left, {"kind": "x"}, [b"a" * 100])
        framing.write_frame(left, {"kind": "y"}, [memoryview(b"ok"), bytearray(b"!")])
        assert framing.read_frame(right) == ({"kind": "y", "blobs": [2, 1]}, [b"ok", b"!"])


def test_write_frame_survives_partial_sends():
    left, right = socket.socketpair()
    with left, right:
        left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        blobs = [os.urandom(n) for n in (1, 70000, 0, 3, 200000)]
        sender = threading.Thread(target=framing.write_frame, args=(left, {"kind": "z"}, blobs))
        sender.start()
        header, received = framing.read_frame(right)
        sender.join()
    assert header["blobs"] == [len(b) for b in blobs]
    assert received == blobs


def test_frame_reader_keeps_what_follows_a_frame():
    left, right = socket.socketpair()
    with left, right:
        blobs = [b"a", os.urandom(10000), b"", b"z" * 3]
        for blob in blobs:  # all sent before the first read: one receive takes several frames
            framing.write_frame(left, {"kind": "p"}, [blob])
        left.shutdown(socket.SHUT_WR)
        frames = framing.FrameReader(right)
        assert [frames.read()[1] for _ in blobs] == [[b] for b in blobs]
        with pytest.raises(EOFError):
            frames.read()
        with pytest.raises(framing.ProtocolError, match="after the end"):
            framing.write_frame(right, {"kind": "q"})
            framing.write_frame(right, {"kind": "q"})
            framing.read_frame(left)


def test_a_request_that_cannot_be_decoded_fails_alone(loaded):
    # JSON nested past Python's recursion limit raises RecursionError in the worker's decode:
    # that request answers 400, its batch-mate is served and the worker takes the next batch.
    worker = loaded(ECHO)
    deep = b"[" * 100_000 + b"]" * 100_000
    reply, blobs = worker.predict(request(body(deep, "application/json"), request_id="deep"),
                                  request(body(b"fine"), request_id="fine"))
    assert reply["kind"] == "predicted", reply
    first, second = reply["responses"]
    assert (first["status"], first["content_type"], second["status"]) == (
        400, "application/json", 200)
    error = json.loads(blobs[first["blob"]])
    assert error["code"] == 400 and error["type"] == "BadRequestException"
    assert error["message"].startswith("RecursionError")
    assert bytes(blobs[second["blob"]]) == b"fine"
    reply, blobs = worker.predict(request(body(deep, "application/json")))
    assert [r["status"] for r in reply["responses"]] == [400]
    reply, blobs = worker.predict(request(body(b"again")))
    assert reply["kind"] == "predicted" and bytes(blobs[0]) == b"again"
    assert worker.process.poll() is None


def test_large_blobs_travel_in_a_region_sent_once_and_reused():
    left, right = socket.socketpair()
    with left, right:
        sender, receiver = Regions(), Regions()
        blobs = [b"small", os.urandom(300_000), b"", os.urandom(1000)]
        framing.write_frame(left, {"kind": "p"}, blobs, 1000, sender)
        # 0: nothing shared (a small frame: both must fit in the socket's buffer unread)
        framing.write_frame(left, {"kind": "q"}, [b"next"], 1000, sender)
        frames = framing.FrameReader(right, receiver)
        header, received = frames.read()
        assert header == {"kind": "p", "blobs": [5, 300_000, 0, 1000], "shared": [1, 3],
                          "region": 0, "region_size": 1 << 20}
        assert received == blobs and all(type(b) is bytearray for b in received)
        header, received = frames.read()
        assert "shared" not in header and received == [b"next"]
        # Busy until the receiver frees it: the next frame gets a region of its own.
        framing.write_frame(left, {"kind": "p"}, blobs[1:2], 1000, sender)
        header, received = frames.read()
        assert (header["region"], header["region_size"], received) == (1, 1 << 20, blobs[1:2])
        # Freed (with any frame back), region 0 is reused: no descriptor, no size.
        framing.write_frame(right, {"kind": "ack", "freed": [0, 1]}, (), 0, receiver)
        assert framing.FrameReader(left, sender).read()[0]["freed"] == [0, 1]
        framing.write_frame(left, {"kind": "p"}, blobs[3:], 1000, sender)
        header, received = frames.read()
        assert (header["region"], "region_size" in header, received) == (0, False, blobs[3:])
        # Every region busy: the blobs travel in the frame.
        for _ in range(regions.MAX_REGIONS - 1):
            framing.write_frame(left, {"kind": "p"}, blobs[3:], 1000, sender)
            assert frames.read()[0]["region"] in range(regions.MAX_REGIONS)
        framing.write_frame(left, {"kind": "p"}, blobs[3:], 1000, sender)
        header, received = frames.read()
        assert "shared" not in header and received == blobs[3:]


def test_the_workers_regions_are_sealed_against_shrinking():
    own = Regions()
    region, fd, size = own.write_own([memoryview(b"x" * 10)])
    try:
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:torchyard-reply")
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
        assert os.fstat(fd).st_size == size == 1 << 20
        with pytest.raises(OSError):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def test_a_frame_naming_shared_memory_it_lacks_is_refused():
    left, right = socket.socketpair()
    with left, right:
        left.sendall(_hand_frame({"kind": "p", "blobs": [5], "shared": [0], "region": 0}))
        with pytest.raises(framing.ProtocolError, match="without a region of this connection"):
            framing.read_frame(right)
        frames = framing.FrameReader(right, Regions())
        left.sendall(_hand_frame({"kind": "p", "blobs": [5], "shared": [0], "region": 0}))
        with pytest.raises(framing.ProtocolError, match="region 0 was never sent"):
            frames.read()
        left.sendall(_hand_frame(
            {"kind": "p", "blobs": [5], "shared": [0], "region": 0, "region_size": 4096}))
        with pytest.raises(framing.ProtocolError, match="came without its descriptor"):
            framing.FrameReader(right, Regions()).read()
        left.sendall(_hand_frame({"kind": "p", "blobs": [5], "shared": [1], "region": 0}))
        with pytest.raises(framing.ProtocolError, match="bad shared blob indices"):
            framing.read_frame(right)


def test_a_worker_takes_and_gives_large_blobs_in_shared_memory(loaded):
    worker = loaded(ECHO, shared_memory_threshold=1000)
    big = os.urandom(2 * 1024 * 1024)
    # The request's body in the frame, the echo back in a region of the worker's.
    reply, blobs = worker.predict(request(body(big)), request(body(b"small")))
    assert (reply["shared"], reply["region"], reply["region_size"]) == ([0], 0, 2 << 20)
    assert blobs == [big, b"small"]
    # The request's body in a region of the server's too; the worker's region 0 is freed.
    predict = {"kind": "predict", "freed": [0], "requests": [
        {"id": "r", "headers": [], "params": [{"name": "body", "content_type": None, "blob": 0}]}]}
    for _ in range(3):
        reply, blobs = worker.call(predict, [big], share_above=1000)
        assert reply["kind"] == "predicted" and reply["shared"] == [0] and blobs == [big]
        assert reply["region"] == 0 and "region_size" not in reply
