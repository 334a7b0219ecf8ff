"""Deployment recipes (deploy/): the KubeRay RayJob manifest against KubeRay's own RayJob CRD schema
(../shared/kuberay, no Kubernetes cluster needed), its entrypoint against the job's flags, and the
container recipe against the README's install steps."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

from ned_ray.job.options import add_encode_arguments

REPO = Path(__file__).resolve().parents[2]
CRD = REPO.parent / "shared" / "kuberay" / "ray.io_rayjobs.yaml"
MANIFEST = REPO / "deploy" / "kuberay" / "rayjob.yaml"


@pytest.fixture(scope="module")
def schema() -> dict:
    if not CRD.exists():
        pytest.fail(f"KubeRay's RayJob CRD not found at {CRD}: clone the project with ../shared beside it", pytrace=False)
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(value: Any, schema: dict, path: str = "") -> Iterator[str]:
    """Fields the schema does not declare (what the API server prunes, or ``kubectl --validate=strict``
    refuses): a misspelt field would otherwise be dropped silently."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                yield from unknown_fields(item, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from unknown_fields(item, extra, f"{path}.{key}")
            elif properties is not None or extra is False:
                yield f"{path}.{key}"
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{path}[{i}]")


def test_the_rayjob_manifest_satisfies_kuberays_crd_schema(schema):
    manifest = yaml.safe_load(MANIFEST.read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    jsonschema.Draft7Validator(schema).validate(manifest)  # types, enums, required fields
    assert list(unknown_fields(manifest, schema)) == []


def test_the_schema_checks_catch_a_misspelt_field_and_a_wrong_type(schema):
    manifest = yaml.safe_load(MANIFEST.read_text())
    manifest["spec"]["shutdownAfterJobFinish"] = True  # one letter short: Kubernetes would drop it
    manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagePullPolice"] = "x"
    assert sorted(unknown_fields(manifest, schema)) == [
        ".spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0].imagePullPolice", ".spec.shutdownAfterJobFinish"]
    manifest = yaml.safe_load(MANIFEST.read_text())
    manifest["spec"]["shutdownAfterJobFinishes"] = "yes"
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'boolean'"):
        jsonschema.Draft7Validator(schema).validate(manifest)


def test_the_rayjob_runs_the_encode_job_with_its_cache_on_a_volume_and_the_images_ray():
    spec = yaml.safe_load(MANIFEST.read_text())["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    words = shlex.split(spec["entrypoint"])
    assert words[:2] == ["python", "/opt/ned-ray/jobs/encode.py"]
    parser = argparse.ArgumentParser()
    add_encode_arguments(parser)
    args = parser.parse_args(words[2:])  # every flag is one of the job's
    assert args.model_cache == "/cache/ned-ray" and args.models == "all"
    pods = [spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"],
            *(g["template"]["spec"] for g in spec["rayClusterSpec"]["workerGroupSpecs"])]
    for pod in pods:  # the cache's volume is mounted where --model-cache points, on every pod
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts.get("/cache") in {v["name"] for v in pod["volumes"]}
    workers = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert any(w["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu") for w in workers)
    image_ray = re.search(r"^ARG RAY_VERSION=(\S+)$", (REPO / "deploy" / "Dockerfile").read_text(), re.MULTILINE).group(1)
    supported = re.search(r'"(ray\[data,default\][^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert spec["rayClusterSpec"]["rayVersion"] == image_ray and image_ray in Requirement(supported).specifier


def test_the_container_recipe_runs_the_readmes_install_steps():
    readme = (REPO / "README.md").read_text()
    block = readme.split("### On Kubernetes (KubeRay)", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    steps = [line.strip() for line in block.strip().splitlines()]
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    run = dockerfile.split("RUN python3.12 -m venv", 1)[1].split("\nENV", 1)[0]
    commands = ["python3 -m venv" + run.split("&&")[0].replace("\\", "").rstrip()] + \
        [c.replace("\\", "").strip() for c in run.split("&&")[1:]]
    assert [c.split() for c in commands] == [s.split() for s in steps]
