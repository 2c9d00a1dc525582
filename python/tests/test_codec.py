"""The worker's parameter decoding: its quick path for JSON bodies reads what json.loads reads."""

import json

import pytest

from torchyard.codec import decode

BODIES = [b'{"inputs": [{"data": [1, 2.5, "x\\u00e9"]}]}', b"[1, 2]\n\t ", b"[1, 2] x",
          b"{", b"[", b'{"a": 1}{}', b' {"a": 1}', b"5", b"", b"[]", b'{"a": NaN}', b"[1]\x0b",
          b'["\xff"]', b'["\xed\xa0\x80"]', b"\xef\xbb\xbf[1]", '{"a": 1}'.encode("utf-16-le"),
          '[1]'.encode("utf-32"), b"{\x00"]


@pytest.mark.parametrize("body", BODIES)
def test_json_parameters_decode_as_json_loads_does(body):
    try:
        expected = json.loads(bytearray(body))
    except ValueError:
        expected = bytearray(body)  # a body that is not JSON reaches the handler raw
    assert repr(decode(bytearray(body), "application/json; charset=utf-8")) == repr(expected)
