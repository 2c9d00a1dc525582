"""Token authorization and TLS as TorchServe 0.12 has them: key_file.json with expiring
management and inference keys and an API key, `/token` to replace a key, TorchServe's answers
to a missing, wrong or expired key on REST and gRPC, the precedence of
TS_DISABLE_TOKEN_AUTHORIZATION over --disable-token-auth over the file, and HTTPS per listener
by its address's scheme, from PEM files or a PKCS12 keystore."""

import calendar
import json
import re
import stat
import subprocess
import sys
import time

import pytest
import requests

from support import grpc_stubs
from support.reference import REFERENCE

grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc_tools")
from google.protobuf import empty_pb2  # noqa: E402  (protobuf comes with grpcio-tools)

REFUSED = ("Token Authorization failed. Token either incorrect, expired, or not provided "
           "correctly")
TOKEN_API_REFUSED = REFUSED.replace("Authorization", "Authentication")
#: How long the expiring keys work in the first test: token_expiration_min=0.15.
LIFETIME_S = 9


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    """TorchServe's gRPC stubs, generated at test time."""
    out = tmp_path_factory.mktemp("stubs")
    yield grpc_stubs.generate(out)
    sys.path.remove(str(out))


def read_keys(server):
    return json.loads((server.workdir / "key_file.json").read_text())


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def assert_refused(answer, message=REFUSED):
    assert answer.status_code == 400, answer.text
    assert answer.json() == {"code": 400, "type": "InvalidKeyException", "message": message}


def test_keys_expire_rotate_and_are_checked_alike_on_rest_and_grpc(start_server, stubs):
    server = start_server(args=("--enable-model-api",),
                          properties={"token_expiration_min": LIFETIME_S / 60})
    started = time.time()
    key_file = server.workdir / "key_file.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    text = key_file.read_text()
    # TorchServe's layout: Gson's pretty printing, its field order, Java Instants
    assert re.fullmatch(
        r'\{\n  "management": \{\n    "key": "[\w-]+",\n    "expiration time": "(.+)"\n  \},\n'
        r'  "inference": \{\n    "key": "[\w-]+",\n    "expiration time": "(.+)"\n  \},\n'
        r'  "API": \{\n    "key": "[\w-]+"\n  \}\n\}', text), text
    keys = json.loads(text)
    for which in ("management", "inference"):
        expires = keys[which]["expiration time"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?Z", expires)
        remaining = calendar.timegm(time.strptime(expires[:19], "%Y-%m-%dT%H:%M:%S")) - started
        assert LIFETIME_S - 5 <= remaining <= LIFETIME_S, expires
    management, inference, api = (keys[k]["key"] for k in ("management", "inference", "API"))

    pb = stubs
    mp = pb["management_pb2"]
    grpc_management = pb["management_pb2_grpc"].ManagementAPIsServiceStub(
        grpc.insecure_channel(server.grpc_management))
    grpc_inference = pb["inference_pb2_grpc"].InferenceAPIsServiceStub(
        grpc.insecure_channel(server.grpc_inference))

    def grpc_refused(call):
        with pytest.raises(grpc.RpcError) as failure:
            call()
        assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert failure.value.details() == REFUSED

    def list_models(key):
        return grpc_management.ListModels(mp.ListModelsRequest(),
                                          metadata=(("authorization", f"Bearer {key}"),))

    models = f"{server.management}/models"
    # missing, wrong, the other API's key, a malformed header: 400 InvalidKeyException
    for headers in ({}, bearer("abcd1234"), bearer(inference), bearer(api),
                    {"Authorization": f"Bearer {management} extra"},
                    {"Authorization": management}):
        assert_refused(requests.get(models, headers=headers))
    assert requests.get(models, headers=bearer(management)).json() == {"models": []}
    predict = f"{server.inference}/predictions/nope"
    assert_refused(requests.post(predict, data=b"1", headers=bearer(management)))
    assert requests.post(predict, data=b"1", headers=bearer(inference)).status_code == 404
    # unknown paths ask for the key first, as TorchServe's handler chain does
    assert_refused(requests.get(f"{server.inference}/no/such/path"))
    # health probes need none
    assert requests.get(f"{server.inference}/ping").status_code == 200
    grpc_refused(lambda: list_models("abcd1234"))
    grpc_refused(lambda: list_models(inference))
    grpc_refused(lambda: grpc_inference.Ping(empty_pb2.Empty()))
    assert json.loads(list_models(management).msg) == {"models": []}

    # /token takes the API key only, and a type of management or inference
    token = f"{server.management}/token"
    assert_refused(requests.get(token, params={"type": "management"},
                                headers=bearer(management)), TOKEN_API_REFUSED)
    for params in ({}, {"type": "API"}, {"type": "Management"}):
        assert_refused(requests.get(token, params=params, headers=bearer(api)),
                       TOKEN_API_REFUSED)
    assert read_keys(server) == keys
    # /token is the management API's: the inference listener does not know it
    assert requests.get(f"{server.inference}/token", params={"type": "inference"},
                        headers=bearer(inference)).status_code == 404

    # the expiring keys stop working at their expiration time, on both doors
    time.sleep(max(0.0, started + LIFETIME_S + 0.5 - time.time()))
    assert_refused(requests.get(models, headers=bearer(management)))
    assert_refused(requests.post(predict, data=b"1", headers=bearer(inference)))
    grpc_refused(lambda: list_models(management))

    # the API key never expires: it replaces them
    rotated = requests.get(token, params={"type": "management"}, headers=bearer(api))
    assert rotated.status_code == 200 and rotated.text == "\n"
    assert rotated.headers["content-type"] == "application/json"
    renewed = read_keys(server)
    assert renewed["management"]["key"] != management
    assert renewed["management"]["expiration time"][:19] \
        > keys["management"]["expiration time"][:19]
    assert renewed["inference"] == keys["inference"] and renewed["API"] == keys["API"]
    fresh = renewed["management"]["key"]
    assert requests.get(models, headers=bearer(fresh)).status_code == 200
    assert json.loads(list_models(fresh).msg) == {"models": []}
    # a replaced key stops working before it expires
    assert requests.post(token, params={"type": "management"},
                         headers=bearer(api)).status_code == 200
    assert_refused(requests.get(models, headers=bearer(fresh)))
    grpc_refused(lambda: list_models(fresh))
    assert requests.put(token, params={"type": "inference"}, headers=bearer(api)).status_code \
        == 200
    new_inference = read_keys(server)["inference"]["key"]
    assert new_inference != inference
    assert requests.post(predict, data=b"1", headers=bearer(new_inference)).status_code == 404


def models_status(server):
    return requests.get(f"{server.management}/models").status_code


@pytest.mark.parametrize("args, properties, env, token_auth", [
    # --disable-token-auth wins over the file (TorchServe's test_priority)
    (("--disable-token-auth",), {"disable_token_authorization": "false"}, {}, False),
    (("--disable-token-auth",), {}, {}, False),
    ((), {"disable_token_authorization": "true"}, {}, False),
    ((), {"disable_token_authorization": "false"}, {}, True),
    # TS_DISABLE_TOKEN_AUTHORIZATION wins over the file and the flag (test_priority_env,
    # test_priority_env_cmd), with enable_envvars_config only
    ((), {"disable_token_authorization": "false", "enable_envvars_config": "true"},
     {"TS_DISABLE_TOKEN_AUTHORIZATION": "true"}, False),
    (("--disable-token-auth",), {"enable_envvars_config": "true"},
     {"TS_DISABLE_TOKEN_AUTHORIZATION": "false"}, True),
    ((), {}, {"TS_DISABLE_TOKEN_AUTHORIZATION": "true"}, True),
])
def test_token_authorization_switch_precedence(start_server, args, properties, env,
                                               token_auth):
    server = start_server(args=args, properties=properties, env=env)
    assert models_status(server) == (400 if token_auth else 200)
    assert (server.workdir / "key_file.json").exists() == token_auth


def test_model_api_switch_precedence(start_server):
    """TS_ENABLE_MODEL_API overrides --enable-model-api as it overrides the file."""
    server = start_server(args=("--disable-token-auth", "--enable-model-api"),
                          properties={"enable_envvars_config": "true"},
                          env={"TS_ENABLE_MODEL_API": "false"})
    refused = requests.post(f"{server.management}/models", params={"url": "x.mar"})
    assert refused.status_code == 405, refused.text


def make_certificate(directory, bits=2048):
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    cert, key = directory / f"cert{bits}.pem", directory / f"key{bits}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", f"rsa:{bits}", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_https_by_scheme_from_a_pkcs12_keystore(start_server, stubs, tmp_path):
    """management_address=https:// with a keystore, inference_address=http:// plain, on one
    server; the gRPC listeners take the keystore's certificate with enable_grpc_ssl."""
    cert, key = make_certificate(tmp_path)
    keystore = tmp_path / "keystore.p12"
    subprocess.run(["openssl", "pkcs12", "-export", "-in", str(cert), "-inkey", str(key),
                    "-name", "ts", "-passout", "pass:s3cret", "-out", str(keystore)],
                   check=True, capture_output=True)
    server = start_server(https=("management",), properties={
        "keystore": str(keystore), "keystore_pass": "s3cret", "keystore_type": "PKCS12",
        "enable_grpc_ssl": "true"})
    assert server.management.startswith("https://") and server.inference.startswith("http://")
    listed = requests.get(f"{server.management}/models", verify=str(cert))
    assert listed.json() == {"models": []}
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(server.management.replace("https://", "http://") + "/models", timeout=5)
    assert requests.get(f"{server.inference}/ping").json() == {"status": "Healthy"}
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(server.inference.replace("http://", "https://") + "/ping", timeout=5)
    assert requests.get(f"{server.metrics}/metrics").status_code == 200
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    management = stubs["management_pb2_grpc"].ManagementAPIsServiceStub(
        grpc.secure_channel(server.grpc_management, credentials))
    listed = management.ListModels(stubs["management_pb2"].ListModelsRequest(), timeout=10)
    assert json.loads(listed.msg) == {"models": []}


def refused_start(start_server, properties, https=("inference",)):
    """The log of a server that must refuse to start."""
    with pytest.raises(RuntimeError, match="server exited at start") as failure:
        start_server(properties=properties, https=https)
    return str(failure.value)


def test_start_refused_without_a_usable_certificate(start_server, tmp_path):
    log = refused_start(start_server, {})
    assert "no certificate for inference_address: set keystore" in log
    cert, key = make_certificate(tmp_path, bits=1024)
    log = refused_start(start_server, {"certificate_file": str(cert),
                                       "private_key_file": str(key)})
    assert "1024-bit RSA key: torchyard needs at least 2048 bits" in log
    cert, key = make_certificate(tmp_path)
    keystore = tmp_path / "keystore.p12"
    subprocess.run(["openssl", "pkcs12", "-export", "-in", str(cert), "-inkey", str(key),
                    "-passout", "pass:right", "-out", str(keystore)],
                   check=True, capture_output=True)
    log = refused_start(start_server, {"keystore": str(keystore), "keystore_pass": "wrong"},
                        https=("metrics",))
    assert "wrong keystore_pass" in log


TS_TEST_RESOURCES = REFERENCE / "frontend" / "server" / "src" / "test" / "resources"


@pytest.mark.skipif(not (TS_TEST_RESOURCES / "keystore.p12").is_file(),
                    reason="TorchServe's test certificates absent")
def test_torchserves_own_1024_bit_test_key_is_refused(start_server):
    """TorchServe's frontend tests serve HTTPS with a 1024-bit RSA key, from PEM files and from
    a keystore encrypted the legacy way (RC2-40 and 3DES): both are read, and refused."""
    pem = {"certificate_file": str(TS_TEST_RESOURCES / "certs.pem"),
           "private_key_file": str(TS_TEST_RESOURCES / "key.pem")}
    keystore = {"keystore": str(TS_TEST_RESOURCES / "keystore.p12"), "keystore_pass": "changeit"}
    for properties in (pem, keystore):
        log = refused_start(start_server, properties)
        assert "the certificate's key is a 1024-bit RSA key" in log, log
