"""Running as KServe runs TorchServe: its generated config.properties unchanged but for the
ports (inference and management on one address, `model_snapshot`, `load_models=all`,
`enable_envvars_config`), a /mnt/models-like directory, and the container entry point given
KServe's `torchserve --start ...` arguments."""

import os
import re
import subprocess

import grpc
import pytest
import requests

from support.archives import scale_mar
from support.reference import KSERVE_CONFIG, kserve_config_on_ports
from support.server import BINARY, PYTHON, REPO, Server, free_port, listening_hosts

ENTRYPOINT = REPO / "docker" / "entrypoint.sh"

pytestmark = pytest.mark.skipif(not KSERVE_CONFIG.is_file(), reason="no TorchServe reference")


class KServeLayout(Server):
    """The server started through docker/entrypoint.sh with KServe's arguments, on
    `<workdir>/config/config.properties` (KServe's file, ports swapped for free ones) and
    `<workdir>/model-store`."""

    def __init__(self, workdir, env):
        super().__init__(workdir, workdir / "model-store", env=env)
        self.args = ["sh", str(ENTRYPOINT), "torchserve", "--start",
                     f"--model-store={self.store}",
                     f"--ts-config={workdir / 'config' / 'config.properties'}"]

    def _pick_ports(self):
        http, metrics, grpc_inference, grpc_management = (free_port() for _ in range(4))
        text = kserve_config_on_ports(http, metrics, grpc_inference, grpc_management)
        config = self.workdir / "config"
        config.mkdir(exist_ok=True)
        (config / "config.properties").write_text(text)
        self.inference = self.management = f"http://127.0.0.1:{http}"
        self.metrics = f"http://127.0.0.1:{metrics}"
        self.grpc_inference = f"127.0.0.1:{grpc_inference}"
        self.grpc_management = f"127.0.0.1:{grpc_management}"


@pytest.fixture(scope="module")
def kserve(tmp_path_factory):
    mnt = tmp_path_factory.mktemp("mnt-models")
    scale_mar(mnt / "model-store", "mnist", 2.0)
    scale_mar(mnt / "model-store", "triple", 3.0)
    # KServe's file leaves token authorization and the model API at TorchServe's defaults;
    # the TS_* variables, honoured because the file sets enable_envvars_config=true, turn the
    # one off and the other on, and move the metrics listener.
    env = {"TORCHYARD": str(BINARY), "TORCHYARD_PYTHON": str(PYTHON), "MODEL_BASE": str(mnt),
           "TS_DISABLE_TOKEN_AUTHORIZATION": "true", "TS_ENABLE_MODEL_API": "true",
           "TS_METRICS_ADDRESS": f"http://127.0.0.1:{free_port()}"}
    server = KServeLayout(mnt, env)
    server.metrics = env["TS_METRICS_ADDRESS"]
    server.start()
    yield server
    server.stop()


def test_snapshot_models_answer_on_the_shared_port(kserve):
    assert requests.get(f"{kserve.inference}/ping").json() == {"status": "Healthy"}
    assert requests.get(f"{kserve.inference}/v2/health/ready").status_code == 200
    answer = requests.post(f"{kserve.inference}/predictions/mnist", data="4")
    assert answer.status_code == 200 and float(answer.text) == 8.0
    # model_snapshot's settings, not load_models=all's defaults: triple.mar is in the store
    # but not in the snapshot, and TorchServe too ignores load_models when it restores one.
    described = requests.get(f"{kserve.management}/models/mnist").json()[0]
    assert (described["batchSize"], described["maxBatchDelay"], described["maxWorkers"]) \
        == (5, 200, 5)
    assert [m["modelName"] for m in requests.get(f"{kserve.management}/models").json()["models"]] \
        == ["mnist"]


def test_management_on_the_shared_port(kserve):
    base = kserve.management
    registered = requests.post(f"{base}/models", params={"url": "triple.mar",
                                                        "initial_workers": 1,
                                                        "synchronous": "true"})
    assert registered.status_code == 200, registered.text
    assert float(requests.post(f"{base}/predictions/triple", data="2").text) == 6.0
    assert requests.delete(f"{base}/models/triple").status_code == 200
    # As TorchServe's shared listener: a description of both APIs, and the metrics too.
    paths = requests.options(f"{base}/").json()["paths"]
    assert {"/ping", "/predictions/{model_name}", "/models", "/metrics"} <= set(paths)
    assert list(paths).count("/api-description") == 1
    assert "ts_inference_requests_total" in requests.get(f"{base}/metrics").text
    # One listener, one set of fallbacks: unknown paths still get TorchServe's JSON error.
    missing = requests.get(f"{base}/no/such/path")
    assert missing.status_code == 404 and missing.json()["code"] == 404


def test_environment_overrides_metrics_and_grpc_ports(kserve):
    metrics = requests.get(f"{kserve.metrics}/metrics")
    assert metrics.status_code == 200 and "# TYPE" in metrics.text  # metrics_mode=prometheus
    for address in (kserve.grpc_inference, kserve.grpc_management):
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
    # The file's metrics port was given up for the TS_METRICS_ADDRESS one.
    file_port = re.search(r"metrics_address=http://0.0.0.0:(\d+)",
                          (kserve.workdir / "config" / "config.properties").read_text())[1]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{file_port}/metrics", timeout=2)


def test_grpc_inference_is_reachable_from_outside_on_kserves_layout(kserve, start_server):
    # KServe's file names gRPC ports only. TorchServe binds them to 127.0.0.1 (as torchyard
    # does, below), behind the KServe wrapper of its KServe image; torchyard has no wrapper, so
    # the entry point opens gRPC inference on every interface. Management stays local.
    port = lambda address: int(address.rsplit(":", 1)[1])
    assert listening_hosts(port(kserve.grpc_inference)) == {"0.0.0.0"}
    assert listening_hosts(port(kserve.grpc_management)) == {"127.0.0.1"}
    plain = start_server()  # gRPC ports only, started without the entry point
    assert listening_hosts(port(plain.grpc_inference)) == {"127.0.0.1"}
    assert listening_hosts(port(plain.grpc_management)) == {"127.0.0.1"}


def test_entrypoint_serve_finds_the_mnt_models_layout(tmp_path):
    """`serve` picks KServe's layout under $MODEL_BASE when its config exists, else
    TorchServe's /home/model-server layout; `torchyard ...` runs torchyard itself."""
    def run(*args, **env):
        return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True,
                              env={**os.environ, "TORCHYARD": "echo", **env}).stdout.split()

    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.properties").write_text("")
    assert run("serve", "--ncs", MODEL_BASE=str(tmp_path)) == [
        "serve", "--ts-config", f"{tmp_path}/config/config.properties",
        "--model-store", f"{tmp_path}/model-store", "--ncs"]
    assert run(MODEL_BASE=str(tmp_path / "none"), MODEL_SERVER_HOME="/home/ms") == [
        "serve", "--ts-config", "/home/ms/config.properties", "--model-store",
        "/home/ms/model-store"]
    assert run("torchserve", "--start", "--log-config", "l.xml", "--foreground",
               "--models", "all") == ["serve", "--models", "all"]
    assert run("torchyard", "archive", "--help") == ["archive", "--help"]


def test_entrypoint_opens_grpc_inference_for_kserves_config_only(tmp_path):
    """TS_GRPC_INFERENCE_ADDRESS=0.0.0.0 for a config under $MODEL_BASE naming no gRPC
    inference address, however it is passed; never for other configs, a config that names
    one, or over the variable itself."""
    stub = tmp_path / "print-env"  # stands in for torchyard: prints its environment
    stub.write_text("#!/bin/sh\nenv\n")
    stub.chmod(0o755)

    def address(*args, **env):
        run = subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True,
                             env={**os.environ, "TORCHYARD": str(stub), "MODEL_BASE": str(kserve),
                                  **env})
        found = re.search(r"^TS_GRPC_INFERENCE_ADDRESS=(.*)$", run.stdout, re.M)
        return found and found[1]

    kserve, other = tmp_path / "mnt", tmp_path / "home"
    for base in (kserve, other):
        (base / "config").mkdir(parents=True)
        (base / "config" / "config.properties").write_text("grpc_inference_port=7070\n")
    kserve_config = str(kserve / "config" / "config.properties")
    assert address("serve") == "0.0.0.0"
    assert address("torchserve", "--start", f"--ts-config={kserve_config}") == "0.0.0.0"
    assert address("torchserve", "--start", "--ts-config", kserve_config) == "0.0.0.0"
    assert address("torchserve", "--ts-config", str(other / "config" / "config.properties")) \
        is None
    assert address("serve", TS_GRPC_INFERENCE_ADDRESS="10.0.0.1") == "10.0.0.1"
    (kserve / "config" / "config.properties").write_text("grpc_inference_address = 1.2.3.4\n")
    assert address("serve") is None
