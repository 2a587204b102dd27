"""The floors read from the folder names: pipeline -> components -> serving -> core, and no import points up.

Every module's imports are read with `ast` (module level and inside functions alike), so a local
import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOORS = ("core", "serving", "components", "pipeline")
# What each floor may import of the project: itself and the floors below it.
ALLOWED = {
    "core": {"core"},
    "serving": {"core", "serving"},
    "components": {"core", "serving", "components"},
    "pipeline": {"core", "serving", "components", "pipeline"},
}
# Libraries a floor must not depend on: serving is a leaf that runs SavedModels, the steps know no orchestrator.
FORBIDDEN_LIBRARIES = {
    "core": {"keras", "apache_beam", "kfp", "mlflow", "grpc", "tensorflow_serving"},
    "serving": {"keras", "apache_beam", "kfp", "mlflow"},
    "components": {"kfp"},
    "pipeline": set(),
}
STEPS = ("ingest", "preprocess", "train", "evaluate", "register", "deploy")


def imported_modules(path: Path, root: Path = REPO) -> set[str]:
    """Absolute names of every module `path` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join([*base, node.module] if node.module else base))
            else:
                names.add(node.module or "")
    return names


def modules(floor: str, root: Path = REPO) -> list[Path]:
    return sorted((root / floor).rglob("*.py"))


def violations(floor: str, root: Path = REPO) -> list[str]:
    """Every import of `floor`'s modules that points up a floor or at a library the floor must not use."""
    found = []
    for path in modules(floor, root):
        for name in imported_modules(path, root):
            top = name.split(".")[0]
            if top in FLOORS and top not in ALLOWED[floor]:
                found.append(f"{path.relative_to(root)} imports {name}")
            if top in FORBIDDEN_LIBRARIES[floor]:
                found.append(f"{path.relative_to(root)} imports the library {name}")
    return found


@pytest.mark.parametrize("floor", FLOORS)
def test_no_import_points_up_a_floor(floor):
    offending = violations(floor)
    assert not offending, "imports against the floors:\n" + "\n".join(offending)


def test_the_floor_check_sees_local_relative_and_library_imports(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "probe.py").write_text("def f():\n    from components.train import model\n")
    (tmp_path / "serving" / "server").mkdir(parents=True)
    (tmp_path / "serving" / "server" / "probe.py").write_text("from ...pipeline import cli\nimport keras\n")
    assert violations("core", tmp_path) == ["core/probe.py imports components.train"]
    assert sorted(violations("serving", tmp_path)) == [
        "serving/server/probe.py imports pipeline",
        "serving/server/probe.py imports the library keras",
    ]


def test_every_step_has_the_same_entry_module():
    missing = [step for step in STEPS if not (REPO / "components" / step / "step.py").is_file()]
    assert not missing, f"components/<step>/step.py missing for {missing}"


def test_test_support_is_not_shipped_and_test_modules_do_not_import_each_other():
    shipped = [p for floor in FLOORS for p in modules(floor) if p.stem in ("testing", "fixtures", "conftest")]
    assert not shipped, f"test support inside the product: {shipped}"
    crossing = [
        f"{path.name} imports {name}"
        for path in sorted((REPO / "tests").glob("test_*.py"))
        for name in imported_modules(path)
        if name.startswith(("tests.test_", "tests.conftest", "conftest"))
    ]
    assert not crossing, "\n".join(crossing)
