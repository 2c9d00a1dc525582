"""deploy/kubernetes validated offline: the core kinds against Kubernetes' own schemas
(kubernetes-validate), KServe's ServingRuntime and InferenceService against the schemas of
KServe's CRDs (tests/fixtures/kserve). Broken manifests must fail the same checks."""

import copy
import gzip
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from support.server import REPO

DEPLOY = REPO / "deploy" / "kubernetes"
CRD_SCHEMAS = Path(__file__).parent / "fixtures" / "kserve"
K8S_VERSION = "1.30"


def documents(directory: Path) -> list:
    """The resources of a kustomization: rendered by kubectl when it is installed, else read
    from the files its `resources` list names."""
    if shutil.which("kubectl"):
        rendered = subprocess.run(["kubectl", "kustomize", str(directory)], check=True,
                                  capture_output=True, text=True).stdout
        return [d for d in yaml.safe_load_all(rendered) if d]
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        path = directory / name
        if path.is_dir():
            docs += documents(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def validate(doc: dict) -> None:
    """Raises a ValidationError when `doc` does not match its kind's schema."""
    group = doc["apiVersion"].split("/")[0]
    if group == "serving.kserve.io":
        schema_file = CRD_SCHEMAS / f"{doc['kind']}-{doc['apiVersion'].split('/')[1]}.json.gz"
        schema = json.loads(gzip.decompress(schema_file.read_bytes()))
        jsonschema.validate(doc, schema)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def kinds(docs):
    return sorted(d["kind"] for d in docs)


@pytest.mark.parametrize("overlay", ["base", "overlays/gpu", "kserve"])
def test_manifests_match_their_schemas(overlay):
    docs = documents(DEPLOY / overlay)
    for doc in docs:
        validate(doc)
    if overlay == "kserve":
        assert kinds(docs) == ["InferenceService", "ServingRuntime"]
    else:
        assert {"Deployment", "Service", "HorizontalPodAutoscaler",
                "PersistentVolumeClaim"} <= set(kinds(docs))


def test_deployment_probes_scraping_and_autoscaling():
    docs = {d["kind"]: d for d in documents(DEPLOY / "base")}
    pod = docs["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8082"
    # The HPA scales on a metric torchyard exports.
    metric = docs["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric in (REPO / "src" / "metrics" / "mod.rs").read_text()


def test_broken_manifests_are_rejected():
    base = {d["kind"]: d for d in documents(DEPLOY / "base")}
    deployment = copy.deepcopy(base["Deployment"])
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    probe = copy.deepcopy(base["Deployment"])
    probe["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(probe)  # strict: unknown fields are errors
    kserve = {d["kind"]: d for d in documents(DEPLOY / "kserve")}
    runtime = copy.deepcopy(kserve["ServingRuntime"])
    del runtime["spec"]["containers"][0]["name"]
    with pytest.raises(jsonschema.ValidationError):
        validate(runtime)
    service = copy.deepcopy(kserve["InferenceService"])
    service["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate(service)
