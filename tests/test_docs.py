"""The reference documentation stays true: docs/configuration.md names every config.properties
key the server reads and only keys it honours (a real server starts with every documented key
set and warns about none of them), the links of the README and docs/ lead somewhere, and every
test docs/security.md names as the check of a promise exists."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
SECURITY = ROOT / "docs" / "security.md"


def documented_keys() -> set[str]:
    """The keys in the tables of configuration.md's "Keys" section (tables headed `| key |`)."""
    section = CONFIGURATION.read_text().split("\n## Keys\n", 1)[1].split("\n## ", 1)[0]
    keys, in_key_table = set(), False
    for line in section.splitlines():
        if line.startswith("| key |"):
            in_key_table = True
        elif not line.startswith("|"):
            in_key_table = False
        elif in_key_table and not line.startswith("|---"):
            keys.update(re.findall(r"`([A-Za-z_]+)`", line.split("|")[1]))
    return keys


#: The modules that read configuration keys: their accessors take the key as a string literal.
READERS = ("config.rs", "logging/settings.rs")


def keys_read_by_the_server() -> set[str]:
    """The keys the READERS ask the configuration for, and those src/properties.rs always
    counts as read."""
    accessors = (r"(?:get|peek|number|limit|flag|unless_false|path|entries|address|grpc_address"
                 r"|location)")
    read = set()
    for reader in READERS:
        source = (ROOT / "src" / reader).read_text().split("#[cfg(test)]", 1)[0]
        pairs = re.findall(accessors + r'\(\s*"([A-Za-z_]+)"(?:,\s*"([A-Za-z_]+)")?', source)
        # Lower-case names only: `location("LOG_LOCATION", "log_location")` names a variable.
        read |= {key for pair in pairs for key in pair if key and not key.isupper()}
    properties = (ROOT / "src" / "properties.rs").read_text()
    always = re.search(r"let used = RefCell::new\(\s*\[(.*?)\]", properties, re.S).group(1)
    return read | set(re.findall(r'"([A-Za-z_]+)"', always))


def test_every_key_the_server_reads_is_documented():
    read = keys_read_by_the_server()
    assert {"inference_address", "grpc_inference_port", "allowed_urls"} <= read, read
    undocumented = read - documented_keys()
    assert not undocumented, f"add these keys to docs/configuration.md: {sorted(undocumented)}"


#: A valid value for each documented key; the listener addresses and gRPC ports are the test
#: server's own; `certificate_file`, `private_key_file` and `keystore` are made by the test.
VALUES = {
    "grpc_inference_address": "127.0.0.1",
    "grpc_management_address": "127.0.0.1",
    "enable_grpc_ssl": "false",
    "workflow_store": "store",
    "load_models": "",
    "load_workflows": "",
    "models": "{}",
    "snapshot_dir": "snapshots",
    "model_snapshot": '{"models": {}}',
    "workflow_snapshot": '{"workflows": []}',
    "default_workers_per_model": "1",
    "threads_per_worker": "1",
    "max_workers_per_model": "128",
    "job_queue_size": "100",
    "default_response_timeout": "120",
    "default_startup_timeout": "120",
    "unregister_model_timeout": "120",
    "fork_workers": "false",
    "cpu_launcher_enable": "true",
    "cpu_launcher_args": "--use_logical_core",
    "shared_memory_threshold": "1048576",
    "install_py_dep_per_model": "false",
    "decode_input_request": "true",
    "service_envelope": "",
    "shutdown_timeout": "30",
    "number_of_gpu": "0",
    "autoscale_worker_budget": "2",
    "autoscale_window_ms": "2000",
    "autoscale_hold_ms": "30000",
    "scale_down_idle_ms": "10000",
    "max_request_size": "6553500",
    "connection_header_read_timeout_ms": "10000",
    "connection_idle_timeout_ms": "60000",
    "connection_body_timeout_ms": "300000",
    "max_connections": "100",
    "cors_allowed_origin": "*",
    "cors_allowed_methods": "GET,POST",
    "cors_allowed_headers": "*",
    "disable_token_authorization": "true",
    "token_expiration_min": "60",
    "keystore_pass": "changeit",
    "keystore_type": "PKCS12",
    "enable_model_api": "true",
    "allowed_urls": "",
    "use_env_allowed_urls": "false",
    "remote_token_env_allowlist": "",
    "max_remote_response_size": "67108864",
    "download_timeout": "300",
    "max_download_size": "10737418240",
    "max_archive_unpacked_bytes": "4294967296",
    "max_archive_entries": "10000",
    "metrics_mode": "prometheus",
    "model_metrics_auto_detect": "true",
    "handler_metric_max_series": "1000",
    "metric_time_interval": "60",
    "disable_system_metrics": "false",
    "enable_envvars_config": "false",
    "tsConfigFile": "config.properties",
    "log_location": "logs",
    "metrics_location": "logs",
    "log_max_file_size": "100 MB",
    "log_max_files": "5",
    "async_logging": "true",
}


def test_every_documented_key_is_honoured(start_server, tmp_path):
    documented = documented_keys()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    # The same certificate as a PKCS12 keystore, which wins over the PEM files.
    keystore = tmp_path / "keystore.p12"
    subprocess.run(["openssl", "pkcs12", "-export", "-in", str(cert), "-inkey", str(key),
                    "-passout", "pass:changeit", "-out", str(keystore)],
                   check=True, capture_output=True)
    metrics = tmp_path / "metrics.yaml"
    metrics.write_text("model_metrics:\n  counter:\n    - name: DocsCounter\n"
                       "      unit: count\n      dimensions: []\n")
    # The test server sets its listeners itself and starts with `--model-store`, which wins
    # over `model_store` (src/config.rs's unit tests read the key from a file).
    own = {"inference_address", "management_address", "metrics_address",
           "grpc_inference_port", "grpc_management_port", "model_store"}
    log4j = tmp_path / "log4j2.xml"
    log4j.write_text('<Configuration><Loggers><Root level="info"/></Loggers></Configuration>')
    values = {**VALUES, "certificate_file": str(cert), "private_key_file": str(key),
              "keystore": str(keystore),
              "metrics_config": str(metrics), "vmargs": f"-Dlog4j.configurationFile={log4j}"}
    missing = documented - own - values.keys()
    assert not missing, f"give tests/test_docs.py VALUES for {sorted(missing)}"
    properties = {k: values[k] for k in sorted(documented - own)}
    # No --disable-token-auth or --enable-model-api: the keys alone open the server.
    server = start_server(properties={**properties, "not_a_documented_key": "1"}, args=())
    log = server.log_text()
    # The warning names a key that is not read, so the check below can see one.
    assert "config key not_a_documented_key is ignored" in log, log
    ignored = [k for k in documented if f"config key {k} is ignored" in log]
    assert not ignored, f"documented but ignored by the server: {ignored}"


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    anchors = set()
    for line in path.read_text().splitlines():
        if match := re.match(r"#+ (.*)", line):
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def test_links_of_the_readme_and_docs_lead_somewhere():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", link):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.name}: {link}")
            elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target):
                broken.append(f"{page.name}: {link} (no such heading)")
    assert not broken, broken


def test_every_test_security_md_names_exists():
    """Each `tests/FILE.py::NAME` (or `python/tests/...`) in docs/security.md is a test function
    of that file; a NAME ending in `*` must start at least one."""
    named = re.findall(r"`((?:python/)?tests/[\w/]+\.py)::(\w+\*?)`", SECURITY.read_text())
    assert len(named) >= 20, "security.md names the test of each promise"
    missing = []
    for file, name in named:
        path = ROOT / file
        functions = re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M) \
            if path.exists() else []
        found = (any(f.startswith(name[:-1]) for f in functions) if name.endswith("*")
                 else name in functions)
        if not found:
            missing.append(f"{file}::{name}")
    assert not missing, missing
