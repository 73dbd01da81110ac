"""compose.yaml and deploy/: checked with real validators, not string matching.

- compose.yaml against the Compose specification (the `compose-spec` package: the Rust
  compose_spec parser), after YAML anchors and `${VAR:-default}` are resolved as Docker
  Compose resolves them, with the values of .env.example;
- the Kubernetes manifests against the Kubernetes OpenAPI schemas (`kubernetes-validate`,
  schemas shipped in the package, strict: unknown fields fail);
- every command the images, compose and the Jobs run exists in this package's CLI;
- every vLLM flag used is one the pinned vLLM release defines (read from that release's
  source on PyPI), and the adapters path is the same in every container.
"""

from __future__ import annotations

import ast
import re
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.helpers import run_ragtune
from tests.test_images import dockerignore_rules, image_env_settings, in_context, instructions

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33"


def dotenv(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def interpolate(value, env: dict[str, str]):
    """Compose's `${VAR}` / `${VAR:-default}` substitution, applied to the parsed file's strings."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    parsed = yaml.safe_load((REPO / "compose.yaml").read_text())  # anchors and merge keys resolved, as Compose does
    return interpolate(parsed, dotenv(REPO / ".env.example"))


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def test_compose_file_is_valid_against_the_compose_specification(compose):
    from compose_spec import PyCompose

    parsed = PyCompose.from_yaml(yaml.safe_dump(compose, sort_keys=False))
    parsed.validate()  # cross references: volumes, networks...
    assert set(parsed.service_names()) == {"vllm", "service", "service-cpu", "indexer", "finetune"}
    services = compose["services"]
    assert services["service"]["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert {name: s["profiles"] for name, s in services.items()} == {
        "vllm": ["gpu"], "service": ["gpu"], "service-cpu": ["cpu"], "indexer": ["ingest"], "finetune": ["finetune"]}
    for name in ("vllm", "finetune"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]


def test_the_compose_validator_catches_mistakes():
    from compose_spec import PyCompose

    with pytest.raises(ValueError, match="service_happy"):
        PyCompose.from_yaml("services:\n  a:\n    image: x\n    depends_on:\n      b:\n        condition: service_happy\n")


def test_kubernetes_manifests_are_valid_against_the_kubernetes_schemas(manifests):
    import kubernetes_validate

    kinds = []
    for doc in manifests:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        kinds.append(doc["kind"])
    assert {"StatefulSet", "Deployment", "Service", "PersistentVolumeClaim", "Job", "ConfigMap"} <= set(kinds)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                                      "spec": {"portz": []}}, KUBERNETES_VERSION, strict=True)


def by_kind(manifests, kind: str, name: str) -> dict:
    return next(d for d in manifests if d["kind"] == kind and d["metadata"]["name"] == name)


def containers(manifests) -> dict[str, dict]:
    found = {}
    for doc in manifests:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                found[doc["metadata"]["name"]] = container
    return found


def dockerfile_command(name: str) -> list[str]:
    last = {word: args for _, word, args in instructions(REPO / "deploy" / name)}  # the last of each wins, as in Docker
    return ast.literal_eval(last["ENTRYPOINT"]) + ast.literal_eval(last["CMD"])


def subcommand(args: list[str]) -> list[str]:
    words = []
    for arg in args:
        if arg.startswith("-") or "/" in arg:
            break
        words.append(arg)
    return words


def test_every_command_the_containers_run_exists(compose, manifests):
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    commands = [dockerfile_command("service.Dockerfile"), dockerfile_command("finetune.Dockerfile")]
    assert all(c[0] == "ragtune" for c in commands) and "ragtune" in scripts
    commands += [["ragtune", *compose["services"][s]["command"]] for s in ("service", "service-cpu", "indexer", "finetune")]
    commands += [["ragtune", *c["args"]] for name, c in containers(manifests).items() if name != "vllm"]
    checked = set()
    for command in commands:
        words = tuple(subcommand(command[1:]))
        options = [a for a in command if a.startswith("--")]
        if (words, tuple(options)) in checked:
            continue
        checked.add((words, tuple(options)))
        shown = run_ragtune(*words, "--help", timeout=120)
        assert shown.returncode == 0, f"`ragtune {' '.join(words)}` does not exist: {shown.stderr}"
        for option in options:
            assert option in shown.stdout, f"`ragtune {' '.join(words)}` has no option {option}"


def vllm_version(compose, manifests) -> str:
    image = compose["services"]["vllm"]["image"]
    assert image.startswith("vllm/vllm-openai:v")
    assert containers(manifests)["vllm"]["image"] == image  # one pinned release everywhere
    return image.rsplit(":v", 1)[1]


@pytest.fixture(scope="module")
def vllm_source(compose, manifests) -> dict[str, str]:
    """The pinned vLLM release's argument definitions, from its source distribution on PyPI
    (vLLM cannot be installed here: it needs a GPU). Downloaded once, then cached."""
    import httpx

    version = vllm_version(compose, manifests)
    cache = Path.home() / ".cache" / "ragtune" / "test-downloads" / f"vllm-{version}.tar.gz"
    if not cache.exists():
        index = httpx.get("https://pypi.org/simple/vllm/", timeout=60, follow_redirects=True).text
        urls = re.findall(rf'href="([^"#]+/vllm-{re.escape(version)}\.tar\.gz)', index)
        assert urls, f"vllm {version} has no source distribution on PyPI"
        cache.parent.mkdir(parents=True, exist_ok=True)
        data = httpx.get(urls[0], timeout=600, follow_redirects=True).content
        cache.with_suffix(".part").write_bytes(data)
        cache.with_suffix(".part").rename(cache)
    wanted = ("vllm/engine/arg_utils.py", "vllm/entrypoints/common/cli_args.py", "vllm/entrypoints/openai/cli_args.py", "vllm/envs.py")
    files = {}
    with tarfile.open(cache) as archive:
        for member in archive.getmembers():
            relative = member.name.split("/", 1)[-1]
            if relative in wanted:
                files[relative] = archive.extractfile(member).read().decode()
    return files


def vllm_flags(files: dict[str, str]) -> set[str]:
    """Flags `vllm serve` defines: literal "--flag" arguments, and the dataclass fields that
    vLLM turns into flags (EngineArgs, the frontend args: field_name -> --field-name)."""
    flags = set()
    for name, source in files.items():
        if name.endswith("envs.py"):
            continue
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"--[a-z0-9-]+", node.value):
                flags.add(node.value)
            if isinstance(node, ast.ClassDef) and (node.name == "EngineArgs" or node.name.endswith("FrontendArgs")):
                flags |= {"--" + s.target.id.replace("_", "-") for s in node.body
                          if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    return flags


@pytest.mark.slow
def test_the_vllm_flags_used_are_ones_the_pinned_vllm_accepts(compose, manifests, vllm_source):
    flags = vllm_flags(vllm_source)
    assert {"--max-lora-rank", "--enable-lora", "--api-key"} <= flags  # the reader found the definitions
    assert "--no-such-flag" not in flags
    used = [a for a in compose["services"]["vllm"]["command"] if a.startswith("--")]
    used += [a for a in containers(manifests)["vllm"]["args"] if a.startswith("--")]
    assert {"--enable-lora", "--max-loras", "--max-lora-rank", "--max-model-len"} <= set(used)
    unknown = sorted(set(used) - flags)
    assert not unknown, f"vLLM {vllm_version(compose, manifests)} does not define {unknown}"
    # Runtime LoRA loading is switched on by an environment variable that release reads.
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in vllm_source["vllm/envs.py"]
    assert compose["services"]["vllm"]["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    env = {e["name"]: e.get("value") for e in containers(manifests)["vllm"]["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def mounts(service: dict) -> dict[str, str]:
    """volume name -> path inside the container (compose short syntax)."""
    return {v.split(":")[0]: v.split(":")[1] for v in service.get("volumes", []) if isinstance(v, str)}


def test_the_adapters_path_is_the_same_in_every_container(compose, manifests):
    services = compose["services"]
    paths = {name: mounts(s).get("adapters") for name, s in services.items() if "adapters" in mounts(s)}
    assert set(paths) >= {"vllm", "service", "service-cpu", "finetune"}
    for name in ("service", "service-cpu", "finetune"):
        assert services[name]["environment"]["RAGTUNE_ADAPTERS__DIR"] == paths[name]
    assert len(set(paths.values())) == 1, paths

    config = by_kind(manifests, "ConfigMap", "ragtune-config")["data"]
    k8s_paths = {}
    for doc in manifests:
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in spec["volumes"]}
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                if claims.get(mount["name"]) == "ragtune-adapters":
                    k8s_paths[doc["metadata"]["name"]] = mount["mountPath"]
    assert set(k8s_paths) == {"vllm", "ragtune", "ragtune-finetune"}
    assert set(k8s_paths.values()) == {config["RAGTUNE_ADAPTERS__DIR"]} == set(paths.values())


def test_the_service_and_vllm_agree_on_model_and_rank(compose, manifests):
    vllm = compose["services"]["vllm"]["command"]
    service = compose["services"]["service"]["environment"]
    assert vllm[vllm.index("--served-model-name") + 1] == service["RAGTUNE_GENERATION__MODEL"]
    assert vllm[vllm.index("--max-lora-rank") + 1] == str(service["RAGTUNE_ADAPTERS__MAX_RANK"])
    args = containers(manifests)["vllm"]["args"]
    config = by_kind(manifests, "ConfigMap", "ragtune-config")["data"]
    assert args[args.index("--served-model-name") + 1] == config["RAGTUNE_GENERATION__MODEL"]
    assert args[args.index("--max-lora-rank") + 1] == config["RAGTUNE_ADAPTERS__MAX_RANK"]
    # Every vLLM pod is reconciled: the URL names the headless Service of the StatefulSet's
    # pods, and discovery turns it into one replica per pod.
    statefulset = by_kind(manifests, "StatefulSet", "vllm")
    (url,) = yaml.safe_load(config["RAGTUNE_GENERATION__VLLM__URLS"])
    headless = by_kind(manifests, "Service", url.split("//")[1].split(":")[0])
    assert headless["spec"]["clusterIP"] == "None" and statefulset["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    assert config["RAGTUNE_GENERATION__VLLM__DISCOVER"] == "true"


def test_the_settings_the_deployment_sets_exist(compose, manifests):
    """A misspelled RAGTUNE_ variable would be silently ignored; every one must be a setting."""
    names = set(compose["services"]["service"]["environment"]) | set(by_kind(manifests, "ConfigMap", "ragtune-config")["data"])
    names |= set(dotenv(REPO / ".env.example")) | set(dotenv(K8S / "secrets.env.example"))
    assert_settings_exist(n for n in names if n.startswith("RAGTUNE_") and "__" in n)


def assert_settings_exist(names) -> None:
    """Each RAGTUNE_A__B name is a setting (a misspelled one would be silently ignored)."""
    from ragtune.settings import Settings

    for name in sorted(names):
        node = Settings
        for part in name.removeprefix("RAGTUNE_").lower().split("__"):
            fields = node.model_fields
            assert part in fields, f"{name}: no setting {part!r}"
            node = fields[part].annotation


def pip_installs(lines: list[str]) -> dict[str, set[str]]:
    """What pip install lines install, split by how: {"with deps": {...}, "no deps": {...}, "constraints": {...}}."""
    found = {"with deps": set(), "no deps": set(), "constraints": set()}
    for line in lines:
        words, taken = line.split(), set()
        for before, word in zip(["install", *words], words):
            if before in ("-c", "--constraint"):
                found["constraints"].add(Path(word).name)
            elif not word.startswith("-") and before not in ("--index-url", "-i") and word != "pip":
                taken.add(word)
        found["no deps" if "--no-deps" in words else "with deps"] |= taken
    return found


def test_the_cpu_image_has_what_the_openvino_engine_needs():
    """The default engine on a CPU is OpenVINO only where openvino-genai and the exporter are installed
    (service/generation/openvino_files.choose_engine); the image once had neither, so it served on
    transformers, ~4x slower."""
    import tomllib

    dockerfile = REPO / "deploy" / "service.Dockerfile"
    steps = instructions(dockerfile)
    runs = " && ".join(args for stage, word, args in steps if stage == 1 and word == "RUN")
    extras = re.search(r'pip install "\./src\[([^\]]*)\]"', runs).group(1).split(",")
    assert "openvino" in extras
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("openvino-genai") for req in optional["openvino"])

    exporter = image_env_settings(dockerfile)["RAGTUNE_GENERATION__OPENVINO_EXPORTER"]
    venv = exporter.removesuffix("/bin/optimum-cli")
    assert venv != exporter and f"python -m venv {venv}" in runs
    assert (2, "COPY", f"--from=build {venv} {venv}") in steps  # built in the first stage, shipped in the last
    image_recipe = pip_installs([part.split(f"{venv}/bin/pip install", 1)[1]
                                 for part in runs.split("&&") if f"{venv}/bin/pip install" in part])
    makefile = (REPO / "Makefile").read_text()
    make_recipe = pip_installs(re.findall(r"^\t\$\(OV_VENV\)/bin/pip install (.*)$", makefile, re.M))
    assert image_recipe == make_recipe and image_recipe["with deps"]  # the recipe the tests' .venv-openvino is built by
    for name in image_recipe["constraints"]:
        assert (1, "COPY", f"{name} ./src/") in steps and in_context(name, dockerignore_rules())


def test_the_quality_profile_sets_valid_settings_that_a_prompt_can_use():
    """deploy/quality.env, sourced by bash as its header says: every variable a setting, every value valid,
    and its answer template still carrying the passages and the question."""
    import json
    import os
    import subprocess
    import sys

    dump = ("import json, os; from ragtune.settings import get_settings; "
            "print(json.dumps([{k: v for k, v in os.environ.items() if k.startswith(\"RAGTUNE_\")}, get_settings().model_dump(mode=\"json\")]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGTUNE_")}
    shell = subprocess.run(["bash", "-c", f"source {REPO / 'deploy/quality.env'} && {sys.executable} -c '{dump}'"],
                           env=env, capture_output=True, text=True, check=True, cwd=REPO)
    profile, loaded = json.loads(shell.stdout)
    assert profile["RAGTUNE_GENERATION__LOCAL_MODEL_PATH"].endswith("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
    assert_settings_exist(profile)
    assert loaded["prompt"]["answerable_check"] == 0.65 and loaded["retrieval"]["top_k"] == 4
    template = loaded["prompt"]["context_template"]
    assert template.format(passages="P", question="Q") == "Passages:\n\nP\n\nQuestion: Q\n\nAnswer with a short phrase from the passages."
