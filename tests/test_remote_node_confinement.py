"""What a workflow's remote node may reach, end to end on one server: its `ca-file` is a
regular file inside the workflow archive of at most 1 MiB (no device, no system file, no `..`,
no FIFO, no symbolic link out); its `token-env` names only a variable the server's
`remote_token_env_allowlist` allows, and a name that is not allowed answers exactly as an allowed
one that is unset; its answer is read up to `max_remote_response_size` and no further."""

import http.server
import os
import shutil
import threading
import zipfile

import pytest
import requests

from support.archives import war
from support.processes import PeakMemory
from support.server import free_port

FUNCTIONS = '''
def pre(data, context):
    if data is None:
        return None
    return [row.get("data") or row.get("body") for row in data]
'''

#: The stand-in remote's answer size for /big (with a length) and /stream (chunked).
BIG = 3 << 20
STREAMED = 256 << 20
#: The server's max_remote_response_size in these tests.
LIMIT = 1 << 20


class Remote(http.server.BaseHTTPRequestHandler):
    """A stand-in remote model (the far side, not what is tested): /small answers the
    authorization it got, /big answers BIG bytes, /stream STREAMED bytes in chunks."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path.startswith("/small"):
            body = f"auth={self.headers.get('authorization')}".encode()
            return self.answer(body)
        if self.path.startswith("/big"):
            return self.answer(b"x" * BIG)
        self.send_response(200)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        chunk = b"y" * (1 << 20)
        try:
            for _ in range(STREAMED // len(chunk)):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the server stopped reading, as it should

    def answer(self, body):
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def remote():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Remote)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def local(start_module_server, remote):
    return start_module_server(
        properties={"allowed_urls": f"{remote}/.*",
                    "remote_token_env_allowlist": "ALLOWED_SET, ALLOWED_UNSET",
                    "max_remote_response_size": LIMIT},
        env={"ALLOWED_SET": "s3cret", "PROBE_SECRET": "do-not-send"})


def spec(url, lines=""):
    return f"models:\n  r:\n    remote: {url}\n{lines}dag:\n  pre: [r]\n"


def register(server, name, text, extra_files=()):
    war(server.store, name, text, FUNCTIONS, extra_files=extra_files)
    return requests.post(f"{server.management}/workflows", params={"url": f"{name}.war"})


def register_dir(server, name, text, plant):
    """Registers the workflow unpacked into a folder of the store, after `plant(folder)` put
    a file of its own making there (what an archive cannot carry: a FIFO, a link)."""
    archive = war(server.store, name, text, FUNCTIONS)
    folder = server.store / f"{name}_dir"
    shutil.rmtree(folder, ignore_errors=True)
    with zipfile.ZipFile(archive) as z:
        z.extractall(folder)
    archive.unlink()
    plant(folder)
    return requests.post(f"{server.management}/workflows", params={"url": folder.name},
                         timeout=10)


def refused(answer, message):
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["code"] == 400 and body["type"] == "BadRequestException"
    assert message in body["message"], body["message"]
    return body["message"]


@pytest.mark.parametrize("ca_file, message", [
    ("/dev/zero", 'ca-file "/dev/zero" must be a relative path inside the archive'),
    ("/etc/passwd", 'ca-file "/etc/passwd" must be a relative path inside the archive'),
    ("../../../../etc/passwd", "must be a relative path inside the archive"),
    ("../spec.yaml", "must be a relative path inside the archive"),
    ("missing.pem", 'ca-file "missing.pem" is missing from the archive'),
])
def test_ca_file_is_confined_to_the_archive(local, remote, ca_file, message):
    answer = register(local, "ca_wf", spec(f"{remote}/small", f"    ca-file: {ca_file}\n"))
    text = refused(answer, message)
    assert "root:" not in text


def test_ca_file_larger_than_1_mib_is_refused(local, remote, tmp_path):
    big = tmp_path / "big.pem"
    big.write_bytes(b"#" * ((1 << 20) + 1))
    answer = register(local, "big_ca_wf", spec(f"{remote}/small", "    ca-file: big.pem\n"),
                      extra_files=[big])
    refused(answer, 'ca-file "big.pem" is larger than 1048576 bytes')


def test_ca_file_fifo_and_link_out_are_refused_at_once(local, remote):
    lines = "    ca-file: ca.pem\n"
    fifo = register_dir(local, "fifo_wf", spec(f"{remote}/small", lines),
                        lambda d: os.mkfifo(d / "ca.pem"))
    refused(fifo, 'ca-file "ca.pem" is not a regular file')
    link = register_dir(local, "link_wf", spec(f"{remote}/small", lines),
                        lambda d: os.symlink("/etc/passwd", d / "ca.pem"))
    refused(link, 'ca-file "ca.pem" is a symbolic link')


def test_token_env_names_only_allowed_variables_and_reveals_nothing(local, remote):
    url = f"{remote}/small"
    messages = {}
    for name in ("PROBE_SECRET", "ALLOWED_UNSET", "NEVER_SET"):
        answer = register(local, "token_wf", spec(url, f"    token-env: {name}\n"))
        messages[name] = refused(answer, f"token-env {name} is not available").replace(name, "X")
    assert len(set(messages.values())) == 1, messages
    assert register(local, "token_ok", spec(url, "    token-env: ALLOWED_SET\n")).status_code \
        == 200
    answer = requests.post(f"{local.inference}/wfpredict/token_ok", data="hi")
    assert (answer.status_code, answer.text) == (200, "auth=Bearer s3cret")


@pytest.mark.parametrize("path", ["big", "stream"])
def test_a_remote_answer_beyond_the_limit_is_a_502(local, remote, path):
    name = f"{path}_wf"
    assert register(local, name, spec(f"{remote}/{path}")).status_code == 200
    with PeakMemory(local.process.pid) as memory:
        answer = requests.post(f"{local.inference}/wfpredict/{name}", data="hi", timeout=60)
    assert answer.status_code == 502, answer.text[:300]
    body = answer.json()
    assert body["type"] == "BadGatewayException"
    assert f"answered more than {LIMIT} bytes (max_remote_response_size)" in body["message"]
    # Reading a chunked answer costs a fixed 12-26 MiB of peak (hyper's and the allocator's
    # buffers) whatever its size; buffering it whole would cost at least the 256 MiB it sends.
    assert memory.grown_mib < STREAMED / 4 / (1 << 20), memory.grown_mib
