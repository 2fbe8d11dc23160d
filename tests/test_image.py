"""The image without Docker: one interpreter throughout, and the wheel the Dockerfile builds holds all the steps import.

The Dockerfile COPYs a few paths and runs `python3 -m pip install --no-deps .`; this builds the
same wheel (`pip wheel --no-deps`) from a copy of exactly those paths, minus .dockerignore, and
checks it against what the compiled steps import: each executor's embedded function source is
parsed, its radflow imports followed through the package's own modules, and every one must be a
file of the wheel, as must the curated schemas and the review page's static files.
"""

import ast
import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from radflow.components.train.config import TrainConfig
from radflow.pipeline.cluster import container_image
from radflow.pipeline.compile import compile_pipeline
from radflow.pipeline.config import ClusterConfig, PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PACKAGE_DIRS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def _copied_paths() -> list[str]:
    return [src for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.M) for src in line.split()[:-1]]


def _ignored(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(parts[0], p)
               or (p.startswith("**/") and p[3:] in parts) for p in patterns)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> dict[str, bytes]:
    """The files of the wheel built from the Dockerfile's build context, by name."""
    context, out = tmp_path_factory.mktemp("context"), tmp_path_factory.mktemp("wheel")
    ignore = [p for p in (ROOT / ".dockerignore").read_text().split() if p]
    tracked = subprocess.run(["git", "ls-files", "-z", *_copied_paths()], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for relative in filter(None, tracked):
        if not _ignored(relative, ignore):
            (context / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, context / relative)
    # --no-build-isolation: this environment's setuptools, as the network (the build's fresh one) is not here.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(context)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("radflow-*.whl")
    with zipfile.ZipFile(built) as z:
        return {name: z.read(name) for name in z.namelist()}


def _module_file(module: str) -> Path | None:
    """radflow.x.y -> its source file in the repository (package-dir mapping), or None if not radflow's."""
    for package, folder in sorted(PACKAGE_DIRS.items(), key=lambda kv: -len(kv[0])):
        if module == package or module.startswith(package + "."):
            rest = module[len(package):].lstrip(".").split(".") if module != package else []
            base = ROOT / folder / Path(*rest) if rest else ROOT / folder
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
    return None


def _radflow_imports(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("radflow")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("radflow"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")}
    return found


def _closure(modules: set[str]) -> set[str]:
    seen, todo = set(), set(modules)
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo |= {".".join(parts[:i]) for i in range(1, len(parts))}  # parent packages' __init__ run first
        todo |= _radflow_imports(path.read_text())
    return seen


def _executor_sources(tmp_path) -> dict[str, str]:
    sources = {}
    for i, config in enumerate((PipelineConfig(), PipelineConfig(train=TrainConfig(cv_folds=2)),
                                PipelineConfig(cluster=ClusterConfig(train_workers=2, tfjob_work_root="gs://b/w")))):
        with open(compile_pipeline(config, str(tmp_path / f"{i}.yaml"))) as f:
            spec = next(yaml.safe_load_all(f))
        for name, executor in spec["deploymentSpec"]["executors"].items():
            command = executor["container"]["command"]
            assert command[:2] == ["sh", "-ec"] and "python3 -m kfp.dsl.executor_main" in command[2], name
            sources[name] = command[3]
    return sources


def test_the_wheel_holds_every_module_the_steps_import_and_every_data_file(wheel, tmp_path):
    names = set(wheel)
    sources = _executor_sources(tmp_path)
    assert {"exec-validate", "exec-validation-gate", "exec-train-fold", "exec-train"} <= set(sources)
    imported = _closure(set().union(*(_radflow_imports(s) for s in sources.values())))
    assert {"radflow.components.validate.gate", "radflow.pipeline.tfjob", "radflow.components.train.cv"} <= imported
    paths = {m: _module_file(m) for m in imported}
    wheel_paths = {m: "/".join(m.split(".")) + ("/__init__.py" if p.name == "__init__.py" else ".py")
                   for m, p in paths.items()}
    missing = sorted(w for w in wheel_paths.values() if w not in names)
    assert not missing, f"the image would lack {missing}: add them to pyproject.toml's packages"
    # Data the code opens from the installed package: curated schemas (validate), the review page (serving).
    for folder, package in (("pipeline/schema", "radflow/pipeline/schema"),
                            ("serving/review/static", "radflow/serving/review/static")):
        files = sorted(p.name for p in (ROOT / folder).iterdir() if p.is_file())
        assert files and {f"{package}/{name}" for name in files} <= names, folder
    # Nothing tracked under the package folders is left out (a module only the CLI imports counts too).
    tracked = subprocess.run(["git", "ls-files", *PACKAGE_DIRS.values()], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    by_folder = {folder: package for package, folder in PACKAGE_DIRS.items()}
    expected = {by_folder[t.split("/")[0]].replace(".", "/") + "/" + t.split("/", 1)[1] for t in tracked}
    assert expected <= names, sorted(expected - names)


def test_the_wheel_installs_the_radflow_command_the_tfjob_workers_and_katib_trials_run(wheel):
    (entry_points,) = [n for n in wheel if n.endswith(".dist-info/entry_points.txt")]
    assert "[console_scripts]\nradflow = radflow.cli:main" in wheel[entry_points].decode()
    assert "radflow/cli.py" in wheel


def test_the_dockerfile_installs_and_checks_with_python3_the_interpreter_every_step_runs():
    runs = re.findall(r"^RUN (.+?)(?<!\\)$", DOCKERFILE, re.M | re.S)
    installs = [r for r in runs if "pip install" in r]
    assert installs and all(re.search(r"\bpython3 -m pip install\b", r) for r in installs)
    assert not re.search(r"(?<![\w/.])python -m pip", DOCKERFILE)
    # The base image's `python`, if any, must be the same interpreter as python3 (else the build stops).
    assert "os.path.realpath(sys.executable)" in DOCKERFILE and "different interpreters" in DOCKERFILE
    worker = (ROOT / "pipeline" / "tfjob.py").read_text()
    assert "python3" in worker and not re.search(r"(?<![\w/])python (?!3)", worker)


def test_the_image_reference_takes_the_registry_from_config(tmp_path):
    config = PipelineConfig(cluster=ClusterConfig(registry="europe-west4-docker.pkg.dev/p/radflow/"))
    with open(compile_pipeline(config, str(tmp_path / "r.yaml"))) as f:
        spec = next(yaml.safe_load_all(f))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {f"europe-west4-docker.pkg.dev/p/radflow/{PipelineConfig().image}"}
    assert container_image("radflow:0.1.0", "") == "radflow:0.1.0"  # kind: the image `kind load` put on the node
    with pytest.raises(ValueError, match="already names a registry"):
        container_image("gcr.io/p/radflow:0.1.0", "europe-west4-docker.pkg.dev/p/radflow")
    with pytest.raises(ValueError, match="cluster.registry .*a registry and path only"):
        container_image("radflow:0.1.0", "europe-west4-docker.pkg.dev/p/radflow:0.1.0")
