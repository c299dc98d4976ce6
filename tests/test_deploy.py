"""deploy/ stays consistent with the code: manifests parse, use KubeRay v1 fields, name one image and real commands,
and mount the shared volume that holds the HTTP API's runs store."""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
DOCKERFILE = DEPLOY / "Dockerfile"
DASHBOARD = DEPLOY / "grafana" / "pavdm-dashboard.json"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yaml"
PODMONITOR = DEPLOY / "prometheus" / "podmonitor.yaml"
RUNS_PVC = KUBERAY / "runs-pvc.yaml"
METRICS = ROOT / "orchestrator" / "engine" / "metrics.py"

IMAGE = "ghcr.io/example/pavdm:0.1.0"
SERVING_ENV = {"PAVDM_RUNS", "PAVDM_MODEL", "PAVDM_API_KEY", "PAVDM_OVERRIDES"}


def load_all(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_paths() -> dict[str, Path]:
    """kind -> the file in deploy/kuberay holding the single KubeRay object of that kind."""
    found = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        if path != RUNS_PVC:
            (doc,) = load_all(path)
            found[doc["kind"]] = path
    return found


def manifests() -> dict[str, dict]:
    """kind -> the single KubeRay object of each file in deploy/kuberay (runs-pvc.yaml holds core objects)."""
    return {kind: load_all(path)[0] for kind, path in manifest_paths().items()}


def claims() -> dict[str, dict]:
    """name -> the PersistentVolumeClaims of deploy/kuberay/runs-pvc.yaml."""
    return {doc["metadata"]["name"]: doc for doc in load_all(RUNS_PVC) if doc["kind"] == "PersistentVolumeClaim"}


def cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[doc["kind"]]()


def pod_templates(doc: dict) -> dict[str, dict]:
    """'head' and 'worker/<group>' -> pod template of one RayCluster spec."""
    spec = cluster_spec(doc)
    templates = {"head": spec["headGroupSpec"]["template"]}
    for group in spec.get("workerGroupSpecs", []):
        templates[f"worker/{group['groupName']}"] = group["template"]
    return templates


def ray_containers(doc: dict) -> dict[str, dict]:
    """KubeRay runs Ray in the first container of each pod."""
    return {name: t["spec"]["containers"][0] for name, t in pod_templates(doc).items()}


def all_containers(doc: dict) -> list[dict]:
    return [c for t in pod_templates(doc).values() for c in t["spec"]["containers"]]


def port_names(container: dict) -> set[str]:
    return {port["name"] for port in container.get("ports", [])}


def cluster_section() -> str:
    """The "Running on a cluster" section of docs/cluster.md."""
    text = (ROOT / "docs" / "cluster.md").read_text()
    match = re.search(r"^## Running on a cluster\n.*?(?=^## |\Z)", text, re.M | re.S)
    assert match, "docs/cluster.md has no section '## Running on a cluster'"
    return match.group(0)


def shell_lines(markdown: str) -> list[str]:
    """Commands of the ```sh blocks, continuation lines joined."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, re.S):
        lines += block.replace("\\\n", " ").splitlines()
    return [line for line in lines if line.strip()]


def test_every_file_parses():
    yamls = sorted(DEPLOY.rglob("*.yaml"))
    assert {p.relative_to(DEPLOY).as_posix() for p in yamls} >= {
        "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/rayservice.yaml", "kuberay/runs-pvc.yaml",
        "prometheus/prometheus.yaml", "prometheus/podmonitor.yaml"}
    for path in yamls:
        assert load_all(path), f"{path} holds no YAML document"
    assert json.loads(DASHBOARD.read_text())["panels"]
    assert set(manifests()) == {"RayCluster", "RayJob", "RayService"}
    for doc in manifests().values():
        assert doc["apiVersion"] == "ray.io/v1"
    assert {doc["kind"] for doc in load_all(RUNS_PVC)} == {"PersistentVolumeClaim"}, "runs-pvc.yaml: claims only"


# --- the image -------------------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_args() -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in dockerfile_instructions() if word == "ARG" and "=" in rest)


def test_every_manifest_names_the_image_the_readme_builds():
    for kind, doc in manifests().items():
        images = {c["image"] for c in all_containers(doc)}
        assert images == {IMAGE}, f"{kind} names {images}, not {IMAGE}"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert IMAGE.rsplit(":", 1)[1] == version, "the image tag should be the project version"
    builds = [line for line in shell_lines(cluster_section()) if line.startswith("docker build")]
    assert any(f"-t {IMAGE} " in f"{line} " for line in builds), f"the README section never builds {IMAGE}"
    assert all("-f deploy/Dockerfile" in line and line.rstrip().endswith(" .") for line in builds)


def test_dockerfile_copies_what_exists_and_installs_torch_before_the_project():
    steps = dockerfile_instructions()
    copies = [shlex.split(rest) for word, rest in steps if word == "COPY"]
    assert copies
    for args in copies:
        assert not any(a.startswith("--from") for a in args), "single-stage build: COPY takes repo files only"
        for source in args[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} is not in the repository"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    if "*" in ignore:  # an allow-list: every COPY source must be let back in
        for args in copies:
            for source in args[:-1]:
                assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is excluded from the context"

    runs = [(i, rest) for i, (word, rest) in enumerate(steps) if word == "RUN"]
    torch = [i for i, rest in runs if re.search(r"pip install .*\btorch==2\.13\.0\b.*--index-url", rest)]
    project = [i for i, rest in runs if re.search(r"pip install (\S+ )*\.(\s|$)", rest)]
    assert torch, "torch==2.13.0 is not installed from a chosen index"
    assert project, "the project is not installed with `pip install .`"
    assert torch[0] < project[0], "torch must be installed before the project"
    assert not any(re.search(r"pip install (\S+ )*(-e|--editable)\b", rest) for _, rest in runs)
    assert "cpu" in dockerfile_args()["TORCH_INDEX"], "the default build is CPU-only"

    words = [word for word, _ in steps]
    assert "ENTRYPOINT" not in words, "KubeRay replaces the command; an ENTRYPOINT would wrap `ray start`"
    cmd = json.loads(next(rest for word, rest in steps if word == "CMD"))
    assert cmd[0] == "pavdm"
    apt = " ".join(rest for _, rest in runs if "apt-get install" in rest)
    assert "bash" in apt and "wget" in apt, "KubeRay needs bash and wget in the image"
    assert re.search(r"ray\[[^\]]*serve[^\]]*\]==\$\{RAY_VERSION\}", " ".join(rest for _, rest in runs))

    exposed = {int(p) for word, rest in steps if word == "EXPOSE" for p in rest.split()}
    for kind, doc in manifests().items():
        for container in all_containers(doc):
            for port in container.get("ports", []):
                assert port["containerPort"] in exposed, f"{kind} uses port {port['containerPort']} not EXPOSEd"


def test_ray_version_matches_the_image():
    ray_version = dockerfile_args()["RAY_VERSION"]
    for kind, doc in manifests().items():
        assert cluster_spec(doc)["rayVersion"] == ray_version, f"{kind}: rayVersion differs from the image's Ray"


# --- commands and the Serve application ----------------------------------------------------------------------

def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def pavdm_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `pavdm`) of RayJob entrypoints and of the README section's shell commands."""
    found = []
    for kind, doc in manifests().items():
        if "entrypoint" in doc["spec"]:
            found.append((f"{kind} entrypoint", shlex.split(doc["spec"]["entrypoint"])))
    for line in shell_lines(cluster_section()):
        found.append(("README section", shlex.split(line, comments=True)))
    commands = []
    for where, argv in found:
        for i, word in enumerate(argv):
            if word == "pavdm" and (i == 0 or argv[i - 1] == "--"):
                commands.append((where, argv[i + 1:]))
    return commands


def check_overrides(overrides: list[str], model: str | None) -> None:
    from orchestrator.state.settings import load_config

    load_config([], overrides, model=model or "tiny")  # unknown keys or bad values raise UserError


def test_entrypoints_are_real_pavdm_subcommands():
    from orchestrator.entry.cli import build_parser

    commands = pavdm_commands()
    assert any(where == "RayJob entrypoint" for where, _ in commands)
    known = subcommands(build_parser())
    assert {"generate", "resume"} <= known
    for where, argv in commands:
        assert argv and argv[0] in known, f"{where}: `pavdm {argv[0] if argv else ''}` is not one of {sorted(known)}"
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):  # as cli.main does: KEY=VALUE may also follow the options
                args, extra = build_parser().parse_known_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `pavdm {shlex.join(argv)}` does not parse: {err.getvalue().strip()}")
        stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
        assert not stray, f"{where}: `pavdm {shlex.join(argv)}`: unrecognized arguments {stray}"
        check_overrides([*(getattr(args, "overrides", None) or []), *extra], getattr(args, "model", None))


def serve_config() -> dict:
    return yaml.safe_load(manifests()["RayService"]["spec"]["serveConfigV2"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Serve's schemas on pydantic 2
def test_serve_config_names_the_pavdm_application():
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    config = serve_config()
    validate = getattr(ServeDeploySchema, "model_validate", None) or ServeDeploySchema.parse_obj
    validate(config)
    for schema, data in [(ServeDeploySchema, config), *((ServeApplicationSchema, a) for a in config["applications"])]:
        fields = getattr(schema, "model_fields", None) or schema.__fields__
        assert set(data) <= set(fields), f"unknown Serve config fields {set(data) - set(fields)}"
    (app,) = config["applications"]
    assert app["import_path"] == "orchestrator.entry.serving.app:app"
    assert app["route_prefix"] == "/"
    env = app["runtime_env"]["env_vars"]
    assert set(env) <= SERVING_ENV - {"PAVDM_API_KEY"}, "the API key comes from a Secret, never the runtime_env"
    check_overrides(env.get("PAVDM_OVERRIDES", "").split(), env.get("PAVDM_MODEL"))


def test_serve_import_path_exists():
    module, attr = serve_config()["applications"][0]["import_path"].split(":")
    base = ROOT.joinpath(*module.split("."))
    source = next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.exists()), None)
    assert source, f"{module} has no source file in the repository"
    assert re.search(rf"^{attr}\s*(:[^=\n]+)?=", source.read_text(), re.M), f"{source} never assigns `{attr} =`"


def test_pod_environment():
    for kind, doc in manifests().items():
        for container in all_containers(doc):
            for var in container.get("env", []):
                if var["name"].startswith("PAVDM_"):
                    assert var["name"] in SERVING_ENV, f"{kind}: unknown variable {var['name']}"
                if var["name"] == "PAVDM_API_KEY":
                    assert set(var) == {"name", "valueFrom"}, f"{kind}: PAVDM_API_KEY must come from a Secret"
                    assert set(var["valueFrom"]) == {"secretKeyRef"}
                if var["name"] == "PAVDM_OVERRIDES":
                    model = next((v["value"] for v in container["env"] if v["name"] == "PAVDM_MODEL"), None)
                    check_overrides(var["value"].split(), model)
    service = manifests()["RayService"]
    overrides = serve_config()["applications"][0]["runtime_env"]["env_vars"]["PAVDM_OVERRIDES"].split()
    keys_file = next(item.split("=", 1)[1] for item in overrides if item.startswith("serve.keys_file="))
    for template in pod_templates(service).values():  # every pod a replica may land on has the keys mounted
        secrets = {v["name"] for v in template["spec"]["volumes"] if "secret" in v}
        for container in template["spec"]["containers"]:
            assert any(m["name"] in secrets and keys_file.startswith(m["mountPath"].rstrip("/") + "/")
                       for m in container["volumeMounts"]), f"{container['name']} does not mount {keys_file}"


def test_the_readme_creates_every_secret_the_pods_use():
    section = cluster_section()
    for kind, doc in manifests().items():
        for container in all_containers(doc):
            refs = [v["valueFrom"]["secretKeyRef"] for v in container.get("env", []) if "valueFrom" in v]
            refs += [e["secretRef"] for e in container.get("envFrom", []) if "secretRef" in e]
            for ref in refs:
                assert f"kubectl create secret generic {ref['name']} " in section, f"{kind}: secret {ref['name']}"
                if "key" in ref:
                    assert f"--from-literal={ref['key']}=" in section, f"{kind}: secret key {ref['key']}"
        for template in pod_templates(doc).values():
            for volume in template["spec"].get("volumes", []):
                if "secret" in volume:
                    name = volume["secret"]["secretName"]
                    assert f"kubectl create secret generic {name} " in section, f"{kind}: secret {name}"


# --- volumes and the runs store -------------------------------------------------------------------------------
#
# The Serve application keeps its runs store (records, run folders, checkpoints, MP4s) under PAVDM_RUNS, which must
# be a local path: object-store URIs work only for `pavdm batch --out` and its prompt list. On a cluster that path
# lies on a ReadWriteMany claim mounted in every pod, since the Serve replica may run on any node.

def containers_of(template: dict) -> list[dict]:
    return [*template["spec"]["containers"], *template["spec"].get("initContainers", [])]


def pod_claims(template: dict) -> dict[str, str]:
    """volume name -> claim name, for the persistentVolumeClaim volumes of one pod template."""
    return {volume["name"]: volume["persistentVolumeClaim"]["claimName"]
            for volume in template["spec"].get("volumes", []) if "persistentVolumeClaim" in volume}


def claim_users(doc: dict) -> dict[str, list[str]]:
    """claim name -> the pod templates ('head', 'worker/<group>') of a KubeRay object that mount it."""
    users: dict[str, list[str]] = {}
    for where, template in pod_templates(doc).items():
        for claim in sorted(set(pod_claims(template).values())):
            users.setdefault(claim, []).append(where)
    return users


def volume_errors(doc: dict) -> list[str]:
    """Every volumeMount names a volume of its own pod; volume names and a container's mount paths are unique."""
    errors = []
    for where, template in pod_templates(doc).items():
        names = [volume["name"] for volume in template["spec"].get("volumes", [])]
        if len(names) != len(set(names)):
            errors.append(f"{doc['kind']} {where}: duplicate volume names {names}")
        for container in containers_of(template):
            mounts = container.get("volumeMounts", [])
            for mount in mounts:
                if mount["name"] not in names:
                    errors.append(f"{doc['kind']} {where} {container['name']}: mounts {mount['name']!r}, "
                                  f"which is not a volume of its pod {names}")
            paths = [mount["mountPath"] for mount in mounts]
            if len(paths) != len(set(paths)):
                errors.append(f"{doc['kind']} {where} {container['name']}: duplicate mount paths {paths}")
    return errors


def claim_errors(doc: dict, defined: dict[str, dict]) -> list[str]:
    """Every claim the pods mount is defined in runs-pvc.yaml; one mounted by several pods is ReadWriteMany."""
    errors = []
    for claim, users in sorted(claim_users(doc).items()):
        if claim not in defined:
            errors.append(f"{doc['kind']} {', '.join(users)}: claim {claim!r} is not defined in {RUNS_PVC.name}")
        elif len(users) > 1 and "ReadWriteMany" not in defined[claim]["spec"].get("accessModes", []):
            errors.append(f"{doc['kind']}: claim {claim!r} is mounted by {users} but is not ReadWriteMany")
    return errors


def serve_env(doc: dict) -> dict:
    """env_vars of the runtime_env of every Serve application of a RayService, merged."""
    config = yaml.safe_load(doc["spec"].get("serveConfigV2") or "{}") or {}
    env = {}
    for app in config.get("applications", []):
        env.update((app.get("runtime_env") or {}).get("env_vars") or {})
    return env


def runs_claim(value, template: dict, container: dict) -> tuple[str | None, str]:
    """The claim that holds PAVDM_RUNS=value in this container (None if none), and what is wrong with the value
    ("" if nothing)."""
    if not isinstance(value, str):
        return None, "must be set with `value:` to a path"
    path = PurePosixPath(value)
    if "://" in value or not path.is_absolute() or ".." in path.parts:
        return None, f"{value!r} must be an absolute local path (object-store URIs do not work for the runs store)"
    claims_by_volume = pod_claims(template)
    mounts = [m for m in container.get("volumeMounts", []) if m["name"] in claims_by_volume
              and not m.get("readOnly") and path.is_relative_to(m["mountPath"])]
    if not mounts:
        return None, f"{value!r} lies under no read-write persistentVolumeClaim mount of the container"
    deepest = max(mounts, key=lambda m: len(PurePosixPath(m["mountPath"]).parts))
    return claims_by_volume[deepest["name"]], ""


def runs_path_errors(doc: dict) -> list[str]:
    """PAVDM_RUNS, wherever set (a container's env, the Serve runtime_env), is a local path on a mounted claim,
    and one claim: the runtime_env's path must resolve in the Ray container of every pod, where a replica may run."""
    errors, used = [], set()
    templates = pod_templates(doc)
    for where, template in templates.items():
        for container in containers_of(template):
            for var in container.get("env", []):
                if var["name"] == "PAVDM_RUNS":
                    claim, error = runs_claim(var.get("value"), template, container)
                    errors += [f"{doc['kind']} {where} {container['name']}: PAVDM_RUNS {error}"] if error else []
                    used.add(claim)
    if "PAVDM_RUNS" in serve_env(doc):
        for where, template in templates.items():
            claim, error = runs_claim(serve_env(doc)["PAVDM_RUNS"], template, template["spec"]["containers"][0])
            errors += [f"{doc['kind']} runtime_env, in {where}: PAVDM_RUNS {error}"] if error else []
            used.add(claim)
    if len(used - {None}) > 1:
        errors.append(f"{doc['kind']}: PAVDM_RUNS lies on different claims {sorted(used - {None})}")
    return errors


def test_every_volume_mount_names_a_volume_of_its_pod():
    errors = [e for doc in manifests().values() for e in volume_errors(doc)]
    assert not errors, "\n".join(errors)


def test_every_claim_is_defined_in_runs_pvc():
    defined = claims()
    assert "pavdm-runs" in defined
    errors = [e for doc in manifests().values() for e in claim_errors(doc, defined)]
    assert not errors, "\n".join(errors)
    (pvc,) = load_all(RUNS_PVC)
    assert pvc["apiVersion"] == "v1"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "the Serve replica may run (and move) on any node"
    storage = pvc["spec"]["resources"]["requests"]["storage"]
    assert re.fullmatch(r"[0-9]+(\.[0-9]+)?([KMGTPE]i?)?", storage), f"storage {storage!r} is not a quantity"
    used = {claim for doc in manifests().values() for claim in claim_users(doc)}
    assert set(defined) <= used, f"{RUNS_PVC.name} defines claims no manifest mounts: {sorted(set(defined) - used)}"


def test_pavdm_runs_is_a_path_on_a_mounted_volume():
    docs = manifests()
    assert "PAVDM_RUNS" in serve_env(docs["RayService"]), "the RayService names no runs store"
    errors = [e for doc in docs.values() for e in runs_path_errors(doc)]
    assert not errors, "\n".join(errors)
    users = claim_users(docs["RayService"])
    assert any(set(pods) == set(pod_templates(docs["RayService"])) for pods in users.values()), \
        "the RayService should mount its runs claim in every pod"


def test_the_volume_checks_catch_mistakes():
    doc = json.loads(json.dumps(manifests()["RayService"]))
    config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    config["applications"][0]["runtime_env"]["env_vars"]["PAVDM_RUNS"] = "s3://example-bucket/pavdm/runs"
    doc["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    assert "must be an absolute local path" in "\n".join(runs_path_errors(doc))
    config["applications"][0]["runtime_env"]["env_vars"]["PAVDM_RUNS"] = "runs"
    doc["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    assert "must be an absolute local path" in "\n".join(runs_path_errors(doc))
    config["applications"][0]["runtime_env"]["env_vars"]["PAVDM_RUNS"] = "/tmp/runs"
    doc["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    assert "under no read-write persistentVolumeClaim mount" in "\n".join(runs_path_errors(doc))

    doc = json.loads(json.dumps(manifests()["RayService"]))
    worker = doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    claimed = [v["name"] for v in worker["volumes"] if "persistentVolumeClaim" in v]
    worker["containers"][0]["volumeMounts"] = [m for m in worker["containers"][0]["volumeMounts"]
                                               if m["name"] not in claimed]
    assert "in worker/cpu: PAVDM_RUNS" in "\n".join(runs_path_errors(doc))
    worker["containers"][0]["volumeMounts"].append({"name": "nope", "mountPath": "/nope"})
    assert "mounts 'nope', which is not a volume of its pod" in "\n".join(volume_errors(doc))
    worker["volumes"].append({"name": "other", "persistentVolumeClaim": {"claimName": "elsewhere"}})
    assert "claim 'elsewhere' is not defined" in "\n".join(claim_errors(doc, claims()))
    shared = {name: {**pvc, "spec": {**pvc["spec"], "accessModes": ["ReadWriteOnce"]}}
              for name, pvc in claims().items()}
    assert "is not ReadWriteMany" in "\n".join(claim_errors(doc, shared))


def test_the_readme_applies_the_claim_before_the_pods_that_mount_it():
    applied = [m.group(1) for line in shell_lines(cluster_section())
               for m in [re.search(r"kubectl apply -f (\S+)", line)] if m]
    claim_file = RUNS_PVC.relative_to(ROOT).as_posix()
    assert claim_file in applied, f"the README section never applies {claim_file}"
    for kind, path in manifest_paths().items():
        if claim_users(manifests()[kind]):
            manifest = path.relative_to(ROOT).as_posix()
            assert manifest in applied, f"the README section never applies {manifest}"
            assert applied.index(claim_file) < applied.index(manifest), f"apply {claim_file} before {manifest}"


# --- KubeRay CRD fields ----------------------------------------------------------------------------------------
#
# A hand-written subset of the ray.io/v1 CRD schemas of KubeRay v1.7.0
# (ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs,rayservices}.yaml): every field at the levels the
# manifests reach, `...` for a value not walked further, a list for "a list of", a set for an enum, a callable
# for a check of its own. Pod templates are core PodTemplateSpecs, checked against a smaller set of core fields.

def string_map(node, path):
    if not isinstance(node, dict) or not all(isinstance(v, str) for v in node.values()):
        return [f"{path}: must be a map of strings (quote numbers)"]
    return []


def string(node, path):
    return [] if isinstance(node, str) else [f"{path}: must be a string"]


CONTAINER = {
    "name": string, "image": string, "imagePullPolicy": {"Always", "IfNotPresent", "Never"},
    "command": [string], "args": [string], "workingDir": string,
    "ports": [{"name": string, "containerPort": ..., "protocol": {"TCP", "UDP", "SCTP"}}],
    "env": [{"name": string, "value": string,
             "valueFrom": {"secretKeyRef": {"name": string, "key": string, "optional": ...},
                           "configMapKeyRef": {"name": string, "key": string, "optional": ...},
                           "fieldRef": ..., "resourceFieldRef": ...}}],
    "envFrom": [{"prefix": string, "secretRef": {"name": string, "optional": ...},
                 "configMapRef": {"name": string, "optional": ...}}],
    "resources": {"requests": ..., "limits": ..., "claims": ...},
    "volumeMounts": [{"name": string, "mountPath": string, "readOnly": ..., "subPath": string,
                      "subPathExpr": string, "mountPropagation": ..., "recursiveReadOnly": ...}],
    "lifecycle": {"preStop": ..., "postStart": ...},
    "livenessProbe": ..., "readinessProbe": ..., "startupProbe": ..., "securityContext": ...,
}
POD_TEMPLATE = {
    "metadata": {"labels": string_map, "annotations": string_map},
    "spec": {
        "containers": [CONTAINER], "initContainers": [CONTAINER],
        "volumes": [{"name": string, "emptyDir": {"medium": {"", "Memory"}, "sizeLimit": ...},
                     "persistentVolumeClaim": {"claimName": string, "readOnly": ...},
                     "secret": ..., "configMap": ..., "hostPath": ...}],
        "nodeSelector": string_map, "tolerations": ..., "affinity": ..., "serviceAccountName": string,
        "imagePullSecrets": ..., "securityContext": ..., "terminationGracePeriodSeconds": ...,
        "priorityClassName": string, "runtimeClassName": string, "schedulerName": string,
    },
}
HEAD_GROUP = {
    "enableIngress": ..., "headService": ..., "ingressOptions": ..., "labels": string_map,
    "rayStartParams": string_map, "resources": ..., "serviceType": {"ClusterIP", "NodePort", "LoadBalancer"},
    "template": POD_TEMPLATE,
}
WORKER_GROUP = {
    "groupName": string, "idleTimeoutSeconds": ..., "labels": string_map, "maxReplicas": ..., "minReplicas": ...,
    "numOfHosts": ..., "priority": ..., "rayStartParams": string_map, "replicas": ..., "resources": ...,
    "scaleStrategy": ..., "suspend": ..., "template": POD_TEMPLATE,
}
CLUSTER_SPEC = {
    "authOptions": ..., "autoscalerOptions": ..., "enableInTreeAutoscaling": ..., "gcsFaultToleranceOptions": ...,
    "headGroupSpec": HEAD_GROUP, "headServiceAnnotations": string_map, "historyServerOptions": ...,
    "managedBy": ..., "networkPolicy": ..., "rayVersion": string, "suspend": ..., "tlsOptions": ...,
    "upgradeStrategy": ..., "workerGroupSpecs": [WORKER_GROUP],
}
JOB_SPEC = {
    "activeDeadlineSeconds": ..., "backoffLimit": ..., "clusterSelector": string_map, "deletionStrategy": ...,
    "entrypoint": string, "entrypointNumCpus": ..., "entrypointNumGpus": ..., "entrypointResources": string,
    "jobId": string, "managedBy": ..., "metadata": string_map, "preRunningDeadlineSeconds": ...,
    "rayClusterSpec": CLUSTER_SPEC, "runtimeEnvYAML": string, "shutdownAfterJobFinishes": ...,
    "submissionMode": {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"},
    "submitterConfig": {"backoffLimit": ...}, "submitterPodTemplate": POD_TEMPLATE, "suspend": ...,
    "ttlSecondsAfterFinished": ...,
}
SERVICE_SPEC = {
    "deploymentUnhealthySecondThreshold": ..., "excludeHeadPodFromServeSvc": ..., "managedBy": ...,
    "rayClusterConfig": CLUSTER_SPEC, "rayClusterDeletionDelaySeconds": ..., "serveConfigV2": string,
    "serveService": ..., "serviceUnhealthySecondThreshold": ..., "suspend": ...,
    "upgradeStrategy": {"type": {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"},
                        "clusterUpgradeOptions": ...},
}
METADATA = {"name": string, "namespace": string, "labels": string_map, "annotations": string_map}
ACCESS_MODES = {"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"}
CLAIM = {  # core v1 PersistentVolumeClaim
    "apiVersion": {"v1"}, "kind": {"PersistentVolumeClaim"}, "metadata": METADATA,
    "spec": {"accessModes": [ACCESS_MODES], "resources": {"requests": string_map, "limits": string_map},
             "storageClassName": string, "volumeMode": {"Filesystem", "Block"}, "volumeName": string,
             "selector": ..., "dataSource": ..., "dataSourceRef": ..., "volumeAttributesClassName": string},
}
OBJECTS = {
    kind: {"apiVersion": {"ray.io/v1"}, "kind": {kind}, "metadata": METADATA, "spec": spec}
    for kind, spec in [("RayCluster", CLUSTER_SPEC), ("RayJob", JOB_SPEC), ("RayService", SERVICE_SPEC)]
}
REQUIRED = {  # field -> what the CRD (or Kubernetes) requires inside it
    "headGroupSpec": {"template"}, "rayClusterSpec": {"headGroupSpec"}, "rayClusterConfig": {"headGroupSpec"},
    "workerGroupSpecs": {"groupName", "minReplicas", "maxReplicas", "template"}, "containers": {"name", "image"},
    "ports": {"containerPort"}, "env": {"name"}, "volumes": {"name"}, "volumeMounts": {"name", "mountPath"},
    "persistentVolumeClaim": {"claimName"},
}


def unknown_fields(node, allowed, path: str, field: str = "") -> list[str]:
    if allowed is ...:
        return []
    if callable(allowed):
        return allowed(node, path)
    if isinstance(allowed, set):
        return [] if node in allowed else [f"{path}: {node!r} is not one of {sorted(allowed)}"]
    if isinstance(allowed, list):
        if not isinstance(node, list):
            return [f"{path}: expected a list"]
        return [e for i, item in enumerate(node) for e in unknown_fields(item, allowed[0], f"{path}[{i}]", field)]
    if not isinstance(node, dict):
        return [f"{path}: expected a mapping"]
    errors = [f"{path}: missing {key}" for key in sorted(REQUIRED.get(field, set()) - set(node))]
    for key, value in node.items():
        if key not in allowed:
            errors.append(f"{path}.{key}: not a field here")
        else:
            errors += unknown_fields(value, allowed[key], f"{path}.{key}", key)
    return errors


def test_kuberay_manifests_use_only_crd_fields():
    errors = []
    for kind, doc in manifests().items():
        errors += unknown_fields(doc, OBJECTS[kind], kind)
    assert not errors, "fields outside the KubeRay v1 CRDs:\n" + "\n".join(errors)


def test_runs_claim_fields():
    errors = []
    for name, doc in claims().items():
        errors += unknown_fields(doc, CLAIM, f"PersistentVolumeClaim {name}")
    assert not errors, "fields outside the core v1 PersistentVolumeClaim:\n" + "\n".join(errors)


def test_the_field_check_catches_mistakes():
    doc = manifests()["RayJob"]
    broken = json.loads(json.dumps(doc))
    broken["spec"]["shutdownAfterJobFinish"] = True
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["prots"] = []
    broken["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    errors = "\n".join(unknown_fields(broken, OBJECTS["RayJob"], "RayJob"))
    assert "RayJob.spec.shutdownAfterJobFinish: not a field here" in errors
    assert "containers[0].prots: not a field here" in errors
    assert "rayStartParams: must be a map of strings" in errors


def test_worker_groups_and_ports():
    for kind, doc in manifests().items():
        for group in cluster_spec(doc).get("workerGroupSpecs", []):
            assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"], kind
        for where, container in ray_containers(doc).items():
            names = [port["name"] for port in container.get("ports", [])]
            assert len(names) == len(set(names)), f"{kind} {where}: duplicate port names"
            for name in names:  # IANA_SVC_NAME, as Kubernetes requires of port names
                assert re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?", name), f"{kind} {where}: port {name}"
        head = ray_containers(doc)["head"]
        assert {"gcs-server", "dashboard", "metrics", "pavdm-metrics"} <= port_names(head), kind


# --- metrics: the dashboard and the scrape configs against orchestrator/engine/metrics.py ----------------------------

SUFFIXES = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count"),
            "Summary": ("", "_sum", "_count")}


def defined_metrics() -> tuple[dict[str, str], set[str]]:
    """Exported series names (with prometheus_client's suffixes) -> metric type, and the declared label names."""
    series, labels = {}, set()
    for node in ast.walk(ast.parse(METRICS.read_text())):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            kind = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if kind in SUFFIXES and isinstance(node.args[0].value, str):
                name = node.args[0].value.removesuffix("_total") if kind == "Counter" else node.args[0].value
                series.update({name + suffix: kind for suffix in SUFFIXES[kind]})
        if isinstance(node, ast.List):
            labels |= {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return series, labels


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            queries.append(var["query"]["query"] if isinstance(var["query"], dict) else var["query"])
    return queries


def strings_in(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings_in(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings_in(v)]
    return [node] if isinstance(node, str) else []


def test_metrics_module_parses_into_names():
    series, labels = defined_metrics()
    assert len(series) >= 10 and {"run_id", "stage"} <= labels
    assert "pavdm_ticks_total" in series and "pavdm_tick_duration_seconds_bucket" in series


def test_dashboard_uses_only_defined_metrics_and_labels():
    series, labels = defined_metrics()
    queries = dashboard_queries()
    used = {name for q in queries for name in re.findall(r"\bpavdm_\w+", q)}
    assert used, "the dashboard queries no pavdm metric"
    assert used <= set(series), f"not defined in orchestrator/engine/metrics.py: {sorted(used - set(series))}"
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in series}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert families <= shown, f"metrics without a panel: {sorted(families - shown)}"

    allowed_labels = labels | {"le"}
    for q in queries:
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", q):
            assert {x.strip() for x in group.split(",") if x.strip()} <= allowed_labels, q
        for selector in re.findall(r"\{([^{}]*)\}", q):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
                assert label in allowed_labels, q
        for metric in re.findall(r"\b(?:rate|irate|increase)\(\s*(pavdm_\w+)", q):
            assert series[metric] in ("Counter", "Histogram"), f"rate over the gauge {metric}: {q}"
        for inner in re.findall(r"histogram_quantile\([^,]+,(.*)", q):
            assert re.findall(r"pavdm_\w+", inner) and all(
                m.endswith("_bucket") for m in re.findall(r"pavdm_\w+", inner)), q
    dashboard = json.loads(DASHBOARD.read_text())
    legends = [t.get("legendFormat", "") for p in dashboard["panels"] for t in p.get("targets", [])]
    for legend in legends:
        assert set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)) <= allowed_labels, legend


def test_dashboard_structure():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        assert 0 <= panel["gridPos"]["x"] and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
        used_vars = set(re.findall(r"\$\{?(\w+)", json.dumps(panel))) - {"__rate_interval", "__range", "__interval"}
        assert used_vars <= variables, f"{panel['title']}: undefined variables {used_vars - variables}"


def test_scrape_configs_use_only_defined_metrics():
    series, _ = defined_metrics()
    for path in (PROMETHEUS, PODMONITOR):
        used = {name for s in strings_in(load_all(path)) for name in re.findall(r"\bpavdm_\w+", s)}
        assert used <= set(series), f"{path.name}: {sorted(used - set(series))}"


def scraped_port_names() -> dict[str, set[str]]:
    """Container port names that each scrape config selects."""
    (podmonitor,) = load_all(PODMONITOR)
    (prometheus,) = load_all(PROMETHEUS)
    by_config = {"podmonitor": {e["port"] for e in podmonitor["spec"]["podMetricsEndpoints"]}, "prometheus": set()}
    for job in prometheus["scrape_configs"]:
        for rule in job.get("relabel_configs", []):
            if rule.get("source_labels") == ["__meta_kubernetes_pod_container_port_name"]:
                assert rule.get("action") == "keep"
                by_config["prometheus"].add(rule["regex"])
    return by_config


def test_scraped_ports_exist_in_the_ray_pods():
    docs = manifests()
    for config, ports in scraped_port_names().items():
        assert ports == {"pavdm-metrics", "metrics"}, config
        for kind in ("RayCluster", "RayService", "RayJob"):
            head = ray_containers(docs[kind])["head"]
            assert ports <= port_names(head), f"{config}: {kind} head lacks ports {ports - port_names(head)}"
        for kind in ("RayCluster", "RayService"):  # Serve replicas, and so pipelines, may run on any node
            for where, container in ray_containers(docs[kind]).items():
                assert ports <= port_names(container), f"{config}: {kind} {where} lacks {ports - port_names(container)}"
    for spec in (docs["RayCluster"], docs["RayService"], docs["RayJob"]):
        env = " ".join(str(v) for v in strings_in(spec))
        assert "metrics.host=0.0.0.0" in env, f"{spec['kind']}: pipeline metrics would listen on loopback only"


def test_podmonitor_selects_the_ray_pods():
    (podmonitor,) = load_all(PODMONITOR)
    assert podmonitor["apiVersion"] == "monitoring.coreos.com/v1" and podmonitor["kind"] == "PodMonitor"
    assert set(podmonitor["spec"]) <= {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel",
                                       "podTargetLabels", "sampleLimit"}
    for endpoint in podmonitor["spec"]["podMetricsEndpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings",
                                 "metricRelabelings", "honorLabels"}
    wanted = podmonitor["spec"]["selector"]["matchLabels"]
    ours = {k: v for k, v in wanted.items() if not k.startswith("ray.io/")}  # ray.io/* labels are KubeRay's
    for kind, doc in manifests().items():
        for where, template in pod_templates(doc).items():
            labels = template.get("metadata", {}).get("labels", {})
            assert ours.items() <= labels.items(), f"{kind} {where} lacks the labels {ours}"


def test_prometheus_config_passes_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed")
    check = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True)
    if check.returncode and "field kubernetes_sd_configs not found" in check.stdout + check.stderr:
        # A promtool built without Kubernetes discovery (Debian's): check the rest with a static target instead.
        config = load_all(PROMETHEUS)[0]
        for job in config["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None):
                job["static_configs"] = [{"targets": ["pod.example:9464"]}]
        (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
        check = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yaml")],
                               capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
