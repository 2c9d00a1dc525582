"""Snapshots as TorchServe writes and reads them, replaying TorchServe's SnapshotTest.java:
after each change the newest `logs/config/*.cfg` holds the settings the server started with
and a `model_snapshot` equal to TorchServe's expected snapshot (normalised as that test
normalises it); reads, describes and predictions write none; a restart restores it, also
from a snapshot file given as the configuration. Files are read with jproperties, a Java
properties parser."""

import json
import shutil
import time
from pathlib import Path

import jproperties
import pytest
import requests

from support.server import OPEN_FLAGS, Server
from support.reference import ARCHIVES as REFERENCE_ARCHIVES, REFERENCE, needs_reference

EXPECTED = REFERENCE / "frontend" / "server" / "src" / "test" / "resources" / "snapshots"
ARCHIVES = REFERENCE_ARCHIVES / "models"

#: The settings of TorchServe's config_snapshot.properties that torchyard can use here.
SETTINGS = {"load_models": "noop.mar", "default_response_timeout": "120",
            "max_request_size": "2047093252", "disable_token_authorization": "true",
            "enable_model_api": "true"}

pytestmark = needs_reference


def read_properties(path: Path) -> dict:
    props = jproperties.Properties()
    with open(path, "rb") as f:
        props.load(f, "utf-8")
    return {key: value.data for key, value in props.items()}


def normalised(props: dict) -> dict:
    """The model snapshot as SnapshotTest.updateSnapshot leaves it: no name or time, every
    worker count 4."""
    snapshot = json.loads(props["model_snapshot"])
    snapshot["name"], snapshot["created"] = "snapshot", 123456
    for versions in snapshot["models"].values():
        for entry in versions.values():
            entry["minWorkers"] = entry["maxWorkers"] = 4
    return snapshot


class Snapshots:
    """The snapshot directory of one server and what the last check saw in it."""

    def __init__(self, server: Server):
        self.server = server
        self.dir = server.workdir / "logs" / "config"
        self.seen = None

    def latest(self) -> Path:
        files = sorted(self.dir.glob("*.cfg"))
        assert files, "no snapshot written"
        return files[-1]

    def check(self, expected: str):
        """The newest snapshot holds the start settings and TorchServe's `expected` models."""
        deadline = time.monotonic() + 10
        while True:
            latest = self.latest()
            actual = read_properties(latest)
            want = normalised(read_properties(EXPECTED / expected))
            if normalised(actual) == want or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert normalised(actual) == want
        settings = read_properties(self.server.workdir / "config.properties")
        assert {k: v for k, v in actual.items() if k not in ("model_snapshot", "tsConfigFile")} \
            == settings
        assert "workflow_snapshot" not in actual
        self.seen = latest

    def unchanged(self):
        time.sleep(0.3)
        assert self.latest() == self.seen, "a snapshot was written without a change"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = tmp_path_factory.mktemp("snapshot-store")
    for name in ("noop.mar", "noop_v2.mar"):
        shutil.copy(ARCHIVES / name, store / name)
    return store


def start(workdir, store, config_text=None):
    """A server with SETTINGS, or with `config_text` as its whole configuration (on the fresh
    ports this server was given)."""
    server = Server(workdir, store, SETTINGS, OPEN_FLAGS)
    if config_text is not None:
        ports = "".join(f"{key}={url.replace(':', chr(92) + ':')}\n" for key, url in (
            ("inference_address", server.inference), ("management_address", server.management),
            ("metrics_address", server.metrics)))
        (workdir / "config.properties").write_text(config_text + ports)
    return server.start()


def test_snapshots_follow_torchserve_step_by_step(tmp_path, store):
    server = start(tmp_path, store)
    try:
        api = server.management
        snapshots = Snapshots(server)
        snapshots.check("snapshot1.cfg")
        assert requests.delete(f"{api}/models/noop").status_code == 200
        snapshots.check("snapshot2.cfg")
        register = {"url": "noop.mar", "model_name": "noop_v1.0", "runtime": "python"}
        assert requests.post(f"{api}/models", params=register).status_code == 200
        snapshots.check("snapshot3.cfg")
        assert requests.put(f"{api}/models/noop_v1.0",
                            params={"min_worker": 1, "synchronous": "true"}).ok
        snapshots.check("snapshot4.cfg")
        requests.get(f"{api}/models")
        requests.get(f"{api}/models/noop_v1.0")
        snapshots.unchanged()
        with_workers = {"runtime": "python", "initial_workers": 1, "synchronous": "true"}
        assert requests.post(f"{api}/models", params={
            "url": "noop.mar", "model_name": "noop", **with_workers}).status_code == 200
        snapshots.check("snapshot5.cfg")
        requests.post(f"{server.inference}/predictions/noop_v1.0", data={"data": "test"})
        snapshots.unchanged()
        for url in ("noop.mar", "noop_v2.mar"):
            assert requests.post(f"{api}/models", params={
                "url": url, "model_name": "noopversioned", **with_workers}).status_code == 200
            snapshots.check("snapshot6.cfg" if url == "noop.mar" else "snapshot7.cfg")
        assert requests.put(f"{api}/models/noopversioned/1.2.1/set-default").ok
        snapshots.check("snapshot8.cfg")
        assert requests.put(f"{api}/models/noop_v1.0", params={"min_worker": 2}).ok
        snapshots.check("snapshot9.cfg")
        # Failures write no snapshot.
        for method, path in (("delete", "/models/InvalidModel"), ("delete", "/models/noop/9.9"),
                             ("put", "/models/InvalidModel"), ("put", "/models/noop/9.9"),
                             ("put", "/models/noopversioned/3.3.3/set-default"),
                             ("post", "/models?url=InvalidUrl")):
            assert getattr(requests, method)(f"{api}{path}").status_code >= 400
        snapshots.unchanged()
    finally:
        server.stop()
    # Stopping records the state once more, as TorchServe's `torchserve --stop` does.
    assert snapshots.latest().name.endswith("-shutdown.cfg")
    snapshots.check("snapshot9.cfg")

    # A restart with the same configuration restores the newest snapshot.
    server = start(tmp_path, store)
    try:
        snapshots.check("snapshot9.cfg")
        described = requests.get(f"{server.management}/models/noopversioned").json()
        assert described[0]["modelVersion"] == "1.2.1"
        assert requests.get(f"{server.management}/models/noop_v1.0").json()[0]["minWorkers"] == 2
    finally:
        server.stop()

    # So does a restart whose configuration is the snapshot file itself.
    config = snapshots.latest().read_text()
    shutil.rmtree(snapshots.dir)
    server = start(tmp_path, store, config_text=config)
    try:
        names = {m["modelName"] for m in requests.get(f"{server.management}/models")
                 .json()["models"]}
        assert names == {"noop", "noop_v1.0", "noopversioned"}
        assert normalised(read_properties(snapshots.latest())) == \
            normalised(read_properties(EXPECTED / "snapshot9.cfg"))
    finally:
        server.stop()

    # With no configuration file at all, the newest snapshot is the configuration.
    server = Server(tmp_path, store, SETTINGS, OPEN_FLAGS)
    (tmp_path / "config.properties").unlink()
    at = server.args.index("--config")
    del server.args[at:at + 2]
    last = read_properties(snapshots.latest())
    server.inference, server.management = last["inference_address"], last["management_address"]
    server.start()
    try:
        described = requests.get(f"{server.management}/models/noopversioned/all").json()
        assert sorted(d["modelVersion"] for d in described) == ["1.11", "1.2.1"]
    finally:
        server.stop()


def test_workflows_travel_in_their_own_key(start_server, tmp_path):
    from support.archives import war

    store = tmp_path / "store"
    war(store, "flow", "models: {}\ndag:\n  echo: []\n",
        "def echo(data, context):\n    return data and [1 for _ in data]\n")
    server = start_server(store=store)
    assert requests.post(f"{server.management}/workflows", params={"url": "flow.war"}).ok
    latest = sorted((server.workdir / "logs" / "config").glob("*.cfg"))[-1]
    props = read_properties(latest)
    assert json.loads(props["model_snapshot"])["models"] == {}
    workflows = json.loads(props["workflow_snapshot"])["workflows"]
    assert [(w["name"], w["url"]) for w in workflows] == [("flow", "flow.war")]
