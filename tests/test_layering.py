"""The layering of the project's packages: importing one of them (every module in it) loads only the packages its
arrows in :data:`ALLOWED` point to.

Data flows one way: ``agents -> envs -> runtime <- policies``. The benchmark (``bench``) and training (``agents``)
stand side by side and share ``reporting``; ``zoo`` (the shipped models) is loaded by ``envs`` to build pipelines.
``distributed`` (Ray workers) sits on top: nothing imports it but the entry points, and only with ``--workers``.

Three checks: importing a package in a fresh process loads only what its arrows allow (what a user pays for); no
import statement anywhere in it, inside functions included (which the first check does not run), names another
package outside its arrows; and the default path (every package but ``distributed``, both entry points) never
imports Ray, an optional extra.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ALLOWED: dict[str, set[str]] = {
    "runtime": set(),
    "policies": {"runtime"},
    "zoo": set(),
    "envs": {"runtime", "zoo"},
    "reporting": {"envs", "policies", "runtime", "zoo"},
    "bench": {"envs", "policies", "reporting", "runtime", "zoo"},
    "agents": {"envs", "policies", "reporting", "runtime", "zoo"},
    "distributed": {"agents", "bench", "envs", "policies", "reporting", "runtime", "zoo"},
}
"""Each package and the project packages it may import; an arrow not listed here is a layering error."""

LAZY_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("zoo", "envs"): "zoo.sampling.sample_digits generates through envs.pipelines.Sampler, imported when it runs",
}
"""Imports inside functions that cross an arrow, each with why; the fresh-process check still holds for them."""

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def imported_packages(package: str) -> set[str]:
    """The other project packages in ``sys.modules`` after importing every module of ``package`` in a fresh process."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, package],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path, "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    return (loaded & set(ALLOWED)) - {package}


def test_the_table_names_every_package_and_its_arrows_form_a_dag() -> None:
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(ALLOWED)
    done: set[str] = set()
    while len(done) < len(ALLOWED):
        ready = {package for package, targets in ALLOWED.items() if package not in done and targets <= done}
        assert ready, f"the arrows among {sorted(set(ALLOWED) - done)} form a cycle"
        done |= ready


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_its_arrows_allow(package: str) -> None:
    imported = imported_packages(package)
    assert imported <= ALLOWED[package], f"{package} imports {sorted(imported - ALLOWED[package])}: not in ALLOWED"


def imported_in_source(package: str) -> dict[str, list[str]]:
    """The other project packages named by any import statement in ``package``'s files, with where (``file:line``).

    Every statement counts, those inside functions and ``TYPE_CHECKING`` blocks included.
    """
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue  # relative imports stay inside the package
            for name in names:
                target = name.split(".")[0]
                if target in ALLOWED and target != package:
                    found.setdefault(target, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_import_statement_crosses_an_arrow(package: str) -> None:
    crossing = {
        target: places
        for target, places in imported_in_source(package).items()
        if target not in ALLOWED[package] and (package, target) not in LAZY_EXCEPTIONS
    }
    assert not crossing, f"{package} imports {crossing}: not in ALLOWED"


def test_runtime_imports_no_project_package() -> None:
    assert imported_in_source("runtime") == {}


_IMPORT_DEFAULT_PATH = """
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    package = importlib.import_module(name)
    for module in pkgutil.walk_packages(getattr(package, "__path__", []), name + "."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
import train_agent, benchmark
train_agent.parse_args(["--workers", "1"])
print(json.dumps(sorted(name for name in sys.modules if name == "ray" or name.startswith("ray."))))
"""


def test_the_default_path_never_imports_ray() -> None:
    """Every package but ``distributed``, and both entry points, load without Ray (an optional extra)."""
    packages = sorted(set(ALLOWED) - {"distributed"})
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_DEFAULT_PATH, *packages],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path, "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
