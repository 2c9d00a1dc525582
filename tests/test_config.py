"""config.properties as TorchServe reads it: `TS_*` environment variables when
enable_envvars_config is set, and a warning for every key that has no effect."""

import requests

from support.archives import build_mar, manifest

HANDLER = '''
def handle(data, context):
    if data:
        return [1 for _ in data]
'''


def test_environment_overrides_and_ignored_keys_are_named(start_server, tmp_path, monkeypatch):
    store = tmp_path / "store"
    build_mar(store, "tiny", {"h.py": HANDLER}, manifest("tiny", "h.py"))
    monkeypatch.setenv("TS_MAX_WORKERS_PER_MODEL", "1")
    monkeypatch.setenv("TS_ALLOWED_URLS", "file://.*")
    server = start_server(store=store, properties={
        "enable_envvars_config": "true", "max_workers_per_model": 8,
        "vmargs": "-Xmx1g", "no_such_setting": "1"})
    models = f"{server.management}/models"
    assert requests.post(models, params={"url": "tiny.mar", "synchronous": "true"}).status_code \
        == 200
    scaled = requests.put(f"{models}/tiny", params={"min_worker": 2})
    assert scaled.status_code == 400 and "max_workers_per_model is 1" in scaled.json()["message"]
    # allowed_urls comes from the environment only with use_env_allowed_urls=true.
    outside = requests.post(models, params={"url": f"file://{store}/tiny.mar",
                                            "model_name": "again"})
    assert outside.status_code == 400 and "allowed_urls" in outside.json()["message"]
    log = server.log_text()
    assert "config key vmargs is ignored: a JVM/Netty setting" in log
    assert "config key no_such_setting is ignored" in log
    assert "config key max_workers_per_model" not in log
    assert "config key enable_envvars_config" not in log


def test_environment_is_ignored_unless_enabled(start_server, tmp_path, monkeypatch):
    store = tmp_path / "store"
    build_mar(store, "tiny", {"h.py": HANDLER}, manifest("tiny", "h.py"))
    monkeypatch.setenv("TS_MAX_WORKERS_PER_MODEL", "1")
    server = start_server(store=store)
    models = f"{server.management}/models"
    assert requests.post(models, params={"url": "tiny.mar", "synchronous": "true"}).status_code \
        == 200
    assert requests.put(f"{models}/tiny", params={"min_worker": 2, "synchronous": "true"}) \
        .status_code == 200


def test_load_workflows_starts_workflows_like_load_models(start_server, tmp_path):
    from support.archives import war

    store = tmp_path / "store"
    war(store, "flow", "models: {}\ndag:\n  echo: []\n",
        "def echo(data, context):\n    return data and [row.get('data') for row in data]\n")
    server = start_server(store=store, properties={"load_workflows": "greet=flow.war"})
    listed = requests.get(f"{server.management}/workflows").json()["workflows"]
    assert [w["workflowName"] for w in listed] == ["greet"]
    assert requests.post(f"{server.inference}/wfpredict/greet", data={"data": "hi"}).text == "hi"
    assert "config key load_workflows" not in server.log_text()


def test_cors_headers_only_when_an_origin_is_allowed(start_server):
    origin = {"Origin": "https://app.example.com"}
    plain = start_server()
    assert "access-control-allow-origin" not in requests.get(f"{plain.inference}/ping",
                                                             headers=origin).headers
    server = start_server(properties={"cors_allowed_origin": "https://app.example.com",
                                      "cors_allowed_methods": "GET, POST, PUT, OPTIONS",
                                      "cors_allowed_headers": "X-Custom-Header"})
    ping = requests.get(f"{server.inference}/ping", headers=origin)
    assert ping.headers["access-control-allow-origin"] == "https://app.example.com"
    preflight = requests.options(f"{server.management}/models", headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-Custom-Header"})
    assert preflight.status_code == 200
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "x-custom-header" in preflight.headers["access-control-allow-headers"].lower()
    other = requests.get(f"{server.inference}/ping", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_models_key_sets_startup_models_settings_and_default_version(start_server, tmp_path):
    store = tmp_path / "store"
    for version in ("1.0", "2.0"):
        build_mar(store, f"tiny_{version}", {"h.py": HANDLER}, manifest("tiny", "h.py", version))
    models = {"tiny": {"1.0": {"minWorkers": 2, "maxWorkers": 3, "batchSize": 4,
                               "maxBatchDelay": 7, "responseTimeout": 9},
                       "2.0": {"defaultVersion": True, "marName": "tiny_2.0.mar"}}}
    import json
    server = start_server(store=store, properties={
        "load_models": "tiny=tiny_1.0.mar,tiny=tiny_2.0.mar", "models": json.dumps(models)})
    described = requests.get(f"{server.management}/models/tiny").json()[0]
    assert described["modelVersion"] == "2.0"
    first = requests.get(f"{server.management}/models/tiny/1.0").json()[0]
    assert (first["minWorkers"], first["maxWorkers"], first["batchSize"],
            first["maxBatchDelay"]) == (2, 3, 4, 7)
    assert "config key models" not in server.log_text()
