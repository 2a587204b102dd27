"""Images a cluster can use: registry-named images, a runtime lock without the test tools, the build's commit."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from components.register.tracking import git_commit
from core.config import Config
from pipeline.cli import main
from pipeline.cluster import names_a_registry
from pipeline.metadata import describe_model

REPO = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = REPO / "requirements.lock"
TEST_LOCK = REPO / "requirements-test.lock"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# The installer's own packages: every virtual environment (ensurepip) and the python base image
# ship them, and `pip freeze` leaves them out of a lock.
BOOTSTRAP = {"pip", "setuptools"}
REGISTRY_IMAGE = "europe-docker.pkg.dev/p/r/fashion-classifier:v1"
REGISTRY_GPU_IMAGE = "europe-docker.pkg.dev/p/r/fashion-classifier-gpu:v1"


# --- images that name a registry -------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "named"),
    [
        ("fashion-classifier:latest", False),
        ("fashion-classifier", False),
        ("fashion-classifier@sha256:" + "0" * 64, False),
        (REGISTRY_IMAGE, True),
        ("localhost:5000/fashion-classifier", True),
        ("myorg/fashion-classifier:v1", True),  # a Docker Hub repository someone can push to
    ],
)
def test_an_image_names_a_registry_when_it_says_where_to_pull_from(image, named):
    assert names_a_registry(image) is named


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning:" in line]


def _package_images(path: Path) -> set[str]:
    spec = yaml.safe_load(path.read_text())
    return {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}


def test_compile_warns_in_one_line_when_the_image_names_no_registry(tmp_path, capsys):
    package = tmp_path / "pipeline.yaml"
    assert main(["compile", "--preset", "ci", "--out", str(package)]) == 0
    (line,) = _warnings(capsys.readouterr().err)
    assert line.startswith(
        "fashion compile: warning: fashion-classifier:latest (pipeline.base_image) names no registry"
    )
    assert "make compile IMAGE_REGISTRY=reg/ IMAGE_TAG=v1" in line
    assert "--set pipeline.base_image=reg/fashion-classifier:v1" in line
    # Without accelerators no step runs in the GPU image, so it is not worth a word.
    assert "gpu_image" not in line and _package_images(package) == {"fashion-classifier:latest"}


def test_compile_names_both_images_when_training_runs_on_a_gpu(tmp_path, capsys):
    args = ["compile", "--preset", "ci", "--set", "pipeline.accelerator_count=1", "--out", str(tmp_path / "p.yaml")]
    assert main(args) == 0
    (line,) = _warnings(capsys.readouterr().err)
    assert "fashion-classifier:latest (pipeline.base_image), fashion-classifier-gpu:latest (pipeline.gpu_image)" in line
    assert (
        "--set pipeline.base_image=reg/fashion-classifier:v1 --set pipeline.gpu_image=reg/fashion-classifier-gpu:v1"
        in line
    )


def test_compile_is_quiet_when_every_image_names_a_registry(tmp_path, capsys):
    package = tmp_path / "pipeline.yaml"
    images = ["--set", f"pipeline.base_image={REGISTRY_IMAGE}", "--set", f"pipeline.gpu_image={REGISTRY_GPU_IMAGE}"]
    assert (
        main(["compile", "--preset", "ci", "--set", "pipeline.accelerator_count=1", *images, "--out", str(package)])
        == 0
    )
    assert _warnings(capsys.readouterr().err) == []
    assert _package_images(package) == {REGISTRY_IMAGE, REGISTRY_GPU_IMAGE}


# --- the runtime lock and the test lock ------------------------------------------------------


def _pins(path: Path) -> dict[str, str]:
    """Canonical name -> pinned version of a lock file's own lines (`-r` includes are not followed)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def _needed(top_level: list[str]) -> dict[str, list[tuple[str, Requirement]]]:
    """Every package `top_level` needs on this platform, recursively: name -> [(who needs it, the requirement)].

    Read from the installed packages' metadata, with markers evaluated for this interpreter (Linux,
    Python 3.11, as in the images) and for the extras asked for.
    """
    needed: dict[str, list[tuple[str, Requirement]]] = {}
    todo = [("pyproject.toml", Requirement(text)) for text in top_level]
    walked = set()
    while todo:
        by, req = todo.pop()
        name = canonicalize_name(req.name)
        needed.setdefault(name, []).append((by, req))
        if (name, frozenset(req.extras)) in walked or name in BOOTSTRAP:
            continue
        walked.add((name, frozenset(req.extras)))
        for text in metadata.distribution(name).requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in req.extras or {""}):
                todo.append((name, sub))
    return needed


def _check_closed(needed: dict[str, list[tuple[str, Requirement]]], pins: dict[str, str]) -> list[str]:
    problems = []
    for name, wanted in sorted(needed.items()):
        if name in BOOTSTRAP:
            continue
        if name not in pins:
            problems.append(f"{name} (needed by {', '.join(sorted({by for by, _ in wanted}))}) is not pinned")
            continue
        installed = metadata.version(name)
        if installed != pins[name]:
            problems.append(f"{name}=={installed} is installed but {pins[name]} pinned: run `make setup`")
        problems += [
            f"{name}=={pins[name]} does not satisfy {by}'s {req}"
            for by, req in wanted
            if not req.specifier.contains(pins[name], prereleases=True)
        ]
    return problems


def test_the_runtime_lock_pins_everything_the_steps_need_and_nothing_else():
    runtime = _pins(RUNTIME_LOCK)
    needed = _needed(PYPROJECT["dependencies"])
    assert _check_closed(needed, runtime) == []
    assert sorted(set(runtime) - set(needed)) == [], "pinned in requirements.lock but needed by nothing at runtime"


def test_the_images_install_no_test_tool():
    runtime = _pins(RUNTIME_LOCK)
    tools = {canonicalize_name(Requirement(text).name) for text in PYPROJECT["optional-dependencies"]["test"]}
    assert tools and not tools & set(runtime)


def test_the_test_lock_adds_the_test_tools_and_what_only_they_need():
    lines = [line for line in TEST_LOCK.read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "-r requirements.lock"  # one place per pin: the runtime ones live in the runtime lock
    runtime, test_only = _pins(RUNTIME_LOCK), _pins(TEST_LOCK)
    assert not set(runtime) & set(test_only)
    needed = _needed(PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["test"])
    assert _check_closed(needed, {**runtime, **test_only}) == []
    assert set(test_only) == set(needed) - set(_needed(PYPROJECT["dependencies"])) - BOOTSTRAP


IMAGE_PACKAGES = ("core", "serving", "components", "pipeline")  # what the images copy


def _libraries_imported(path: Path) -> set[str]:
    """The top-level names of the absolute imports anywhere in `path` (relative ones are the project's)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names - set(IMAGE_PACKAGES) - set(sys.stdlib_module_names) - {"__future__"}


def test_every_library_the_image_code_imports_is_in_the_runtime_lock():
    runtime = set(_pins(RUNTIME_LOCK)) | BOOTSTRAP
    providers = metadata.packages_distributions()
    missing = [
        f"{path.relative_to(REPO)} imports {name}"
        for package in IMAGE_PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        for name in sorted(_libraries_imported(path))
        if not {canonicalize_name(d) for d in providers.get(name, [])} & runtime
    ]
    assert missing == []


# --- the commit an image was built from --------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(command, cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.delenv("FASHION_GIT_COMMIT", raising=False)
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-qm", "first")
    return tmp_path


def test_the_commit_baked_into_an_image_wins_over_git(repo, monkeypatch):
    monkeypatch.setenv("FASHION_GIT_COMMIT", "0123abc-dirty")
    assert git_commit(repo) == "0123abc-dirty"
    assert git_commit(repo.parent) == "0123abc-dirty"  # no repository to ask, as in an image


@pytest.mark.parametrize("baked", [None, "", "  "])
def test_without_a_baked_commit_git_answers(repo, monkeypatch, baked):
    if baked is not None:
        monkeypatch.setenv("FASHION_GIT_COMMIT", baked)
    sha = _git(repo, "rev-parse", "HEAD")
    assert git_commit(repo) == sha
    (repo / "notes.txt").write_text("untracked files do not make the tree dirty\n")
    assert git_commit(repo) == sha
    (repo / "code.py").write_text("x = 2\n")
    assert git_commit(repo) == f"{sha}-dirty"


def test_without_a_baked_commit_or_a_repository_the_commit_is_unknown(tmp_path, monkeypatch):
    monkeypatch.delenv("FASHION_GIT_COMMIT", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit(tmp_path) == "unknown"


def test_the_model_artifact_records_the_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_GIT_COMMIT", "0123abc")
    result = SimpleNamespace(model_dir=tmp_path, epochs_run=2, best_epoch=1, resumed_from=None, final_metrics={})
    assert describe_model(result, Config())["git_commit"] == "0123abc"


@pytest.fixture
def make():
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    return lambda *args: (
        subprocess.run(
            [make, "--no-print-directory", "-n", *args], cwd=REPO, check=True, capture_output=True, text=True
        ).stdout
    )


def test_make_images_bakes_in_the_checkout_commit_and_tags_for_the_registry(make):
    builds = [
        line for line in make("images", "IMAGE_REGISTRY=reg/", "IMAGE_TAG=v1").splitlines() if "docker build" in line
    ]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert len(builds) == 2
    for line, image in zip(builds, ("reg/fashion-classifier:v1", "reg/fashion-classifier-gpu:v1"), strict=True):
        commit = re.search(r"--build-arg GIT_COMMIT=(\S*)", line).group(1)
        assert commit.removesuffix("-dirty") == head and f"-t {image} ." in line


def test_a_change_to_either_lock_reinstalls_the_environment(make, tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").touch()  # newer than every lock: nothing to do
    assert "pip install" not in make("setup", f"VENV={venv}")
    for lock in (RUNTIME_LOCK, TEST_LOCK):
        assert "-r requirements-test.lock" in make("-W", lock.name, "setup", f"VENV={venv}")
