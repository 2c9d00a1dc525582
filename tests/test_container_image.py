"""The container image, built from the Dockerfile by scripts/container-test.sh (podman, a Debian
base of the host's release, this checkout's target/release/torchyard) and run through its entry
point on the host's network: the example model and workflow answer over HTTP from the host, as
in TorchServe's image layout and in KServe's."""

import os
import subprocess
import time
import uuid

import pytest
import requests

from support.reference import KSERVE_CONFIG, kserve_config_on_ports
from support.server import BINARY, PYTHON, REPO, free_port, listening_hosts

SCRIPT = REPO / "scripts" / "container-test.sh"
IMAGE = os.environ.get("TORCHYARD_IMAGE", "localhost/torchyard:test")
#: podman's default runtime, crun, fails on these machines' cgroups (v1); podman's default
#: limits are above their hard limits, which runc may not raise there, so containers get lower
#: ones.
PODMAN = ["podman", "--runtime", "runc"]
RUN = [*PODMAN, "run", "--detach", "--network", "host",
       "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/etc/debian_version"),
    reason="builds the image with podman and debootstrap: needs root on Debian")


@pytest.fixture(scope="module")
def image():
    """The image, built (or found up to date) by `scripts/container-test.sh build`."""
    started = time.monotonic()
    try:
        done = subprocess.run([str(SCRIPT), "build"], capture_output=True, text=True,
                              timeout=1200)
    except subprocess.TimeoutExpired:
        pytest.fail("scripts/container-test.sh build ran over 20 minutes (its log: "
                    "target/container-build.log)", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"scripts/container-test.sh build failed ({done.returncode}):\n"
                    f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}", pytrace=False)
    print(f"image {IMAGE} ready in {time.monotonic() - started:.0f} s")
    return IMAGE


@pytest.fixture(scope="module")
def example_store(tmp_path_factory):
    """double.mar, triple.mar and example.war (examples/), readable by the image's user."""
    store = tmp_path_factory.mktemp("container-store")
    subprocess.run([str(REPO / "examples" / "workflow" / "build.sh"), str(store), str(BINARY),
                    str(PYTHON)], check=True, capture_output=True)
    _readable(store)
    return store


def _readable(path):
    """Lets the image's user (uid 1000, not root) read `path`, mounted into the container."""
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


class Container:
    """A container of the image, started with `podman run` and removed by `remove()`."""

    def __init__(self, image, args, env, volumes):
        self.name = f"torchyard-test-{uuid.uuid4().hex[:8]}"
        command = [*RUN, "--name", self.name]
        for key, value in env.items():
            command += ["--env", f"{key}={value}"]
        for host, inside in volumes.items():
            command += ["--volume", f"{host}:{inside}"]
        done = subprocess.run([*command, image, *args], capture_output=True, text=True,
                              timeout=60)
        if done.returncode != 0:
            self.remove()
            pytest.fail(f"podman run failed ({done.returncode}): {done.stderr}", pytrace=False)

    def logs(self) -> str:
        done = subprocess.run([*PODMAN, "logs", self.name], capture_output=True, text=True)
        return done.stdout + done.stderr

    def running(self) -> bool:
        done = subprocess.run([*PODMAN, "inspect", "--format", "{{.State.Running}}", self.name],
                              capture_output=True, text=True)
        return done.stdout.strip() == "true"

    def wait_healthy(self, url, timeout=120.0):
        """Waits for `url`/ping to answer Healthy; fails with the container's log if it
        does not, or if the container stops."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/ping", timeout=2).json() == {"status": "Healthy"}:
                    return
            except (requests.RequestException, ValueError):
                pass
            if not self.running():
                break
            time.sleep(0.5)
        pytest.fail(f"{self.name} not healthy on {url}:\n{self.logs()[-6000:]}", pytrace=False)

    def exec(self, *command) -> str:
        return subprocess.run([*PODMAN, "exec", self.name, *command], check=True,
                              capture_output=True, text=True).stdout

    def remove(self):
        subprocess.run([*PODMAN, "rm", "--force", "--ignore", self.name], capture_output=True)


@pytest.fixture(scope="module")
def served(image, example_store):
    """The image in TorchServe's layout: the store at /home/model-server/model-store, the
    image's config.properties with free loopback ports through `TS_*` variables, `double`
    loaded at start, `serve` given to the entry point."""
    ports = [free_port() for _ in range(5)]
    env = {"TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{ports[0]}",
           "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{ports[1]}",
           "TS_METRICS_ADDRESS": f"http://127.0.0.1:{ports[2]}",
           "TS_GRPC_INFERENCE_ADDRESS": "127.0.0.1", "TS_GRPC_INFERENCE_PORT": str(ports[3]),
           "TS_GRPC_MANAGEMENT_ADDRESS": "127.0.0.1", "TS_GRPC_MANAGEMENT_PORT": str(ports[4]),
           "TS_DISABLE_TOKEN_AUTHORIZATION": "true", "TS_ENABLE_MODEL_API": "true"}
    print("container environment:", env)  # shown when a listener cannot bind
    container = Container(image, ["serve", "--models", "double=double.mar"], env,
                          {example_store: "/home/model-server/model-store:ro"})
    try:
        container.inference, container.management = env["TS_INFERENCE_ADDRESS"], \
            env["TS_MANAGEMENT_ADDRESS"]
        container.wait_healthy(container.inference)
        yield container
    finally:
        container.remove()


def test_prediction_from_the_host(served):
    answer = requests.post(f"{served.inference}/predictions/double", data={"data": "21"},
                           timeout=30)
    assert answer.status_code == 200, answer.text
    assert float(answer.text) == 42.0
    described = requests.get(f"{served.management}/models/double", timeout=10).json()[0]
    assert described["workers"] and all(w["status"] == "READY" for w in described["workers"])


def test_workflow_registered_and_answered(served):
    registered = requests.post(f"{served.management}/workflows", params={"url": "example.war"},
                               timeout=120)
    assert registered.status_code == 200, registered.text
    answer = requests.post(f"{served.inference}/wfpredict/example", data={"data": "5"},
                           timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"double": 10.0, "triple": 15.0, "sum": 25.0}


def test_runs_as_model_server_with_the_images_python(served):
    # TorchServe's image layout: the server and its workers run as model-server (uid 1000) in
    # /home/model-server, the workers on /opt/venv's Python with torch from the build.
    assert served.exec("id", "-u").strip() == "1000"
    assert served.exec("sh", "-c", "echo $TORCHYARD_PYTHON; pwd").split() \
        == ["/opt/venv/bin/python", "/home/model-server"]
    versions = served.exec("/opt/venv/bin/python", "-c",
                           "import torch, numpy, PIL; print(torch.__version__)")
    assert versions.strip()


@pytest.mark.skipif(not KSERVE_CONFIG.is_file(), reason="no TorchServe reference")
def test_kserve_layout_and_arguments(image, tmp_path):
    # KServe's container: its generated config.properties (ports swapped for free ones; its
    # snapshot names mnist.mar) and the store under /mnt/models, the runtime's
    # `torchserve --start ...` arguments.
    mnt = tmp_path / "mnt-models"
    subprocess.run([str(PYTHON), str(REPO / "examples" / "double" / "make_model.py"),
                    str(mnt / "model-store"), "mnist=2"], check=True, capture_output=True)
    http, metrics, grpc_inference, grpc_management = (free_port() for _ in range(4))
    text = kserve_config_on_ports(http, metrics, grpc_inference, grpc_management)
    (mnt / "config").mkdir()
    (mnt / "config" / "config.properties").write_text(text)
    _readable(mnt)
    container = Container(
        image, ["torchserve", "--start", "--model-store=/mnt/models/model-store",
                "--ts-config=/mnt/models/config/config.properties"],
        {"TS_DISABLE_TOKEN_AUTHORIZATION": "true"}, {mnt: "/mnt/models"})
    try:
        url = f"http://127.0.0.1:{http}"
        container.wait_healthy(url)
        answer = requests.post(f"{url}/predictions/mnist", data="4", timeout=30)
        assert answer.status_code == 200, answer.text
        assert float(answer.text) == 8.0
        assert requests.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
        # The entry point opens gRPC inference to the pod's network for KServe's config (the
        # container shares the host's, where its listeners show).
        assert listening_hosts(grpc_inference) == {"0.0.0.0"}
        assert listening_hosts(grpc_management) == {"127.0.0.1"}
    finally:
        container.remove()
