"""What the package imports, it declares: nothing works by the luck of another package's dependencies."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PACKAGE = Path(__file__).resolve().parent.parent / "airflow_provider_jobprogress"
DIST = "airflow-provider-jobprogress"
#: distributions that come with what we declare by name (apache-airflow brings its core and task SDK)
PROVIDED_BY_AIRFLOW = {"apache-airflow", "apache-airflow-core", "apache-airflow-task-sdk"}


def imported_top_levels(root: Path) -> dict[str, list[str]]:
    """Top-level names imported anywhere under ``root`` (not relative imports), with the files importing them."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], []).append(str(path.relative_to(root.parent)))
    return found


def declared_runtime_distributions() -> set[str]:
    requires = importlib.metadata.requires(DIST) or []
    return {canonicalize_name(Requirement(r).name) for r in requires if "extra ==" not in r}


def declared_extra_distributions() -> set[str]:
    requires = importlib.metadata.requires(DIST) or []
    return {canonicalize_name(Requirement(r).name) for r in requires if "extra ==" in r}


#: modules of an optional feature: imported only when its extra is installed (and only from inside a method),
#: so they may import what that extra declares
OPTIONAL_FEATURES = {"airflow_provider_jobprogress/lineage.py": "openlineage"}


def declared_in_extra(extra: str) -> set[str]:
    requires = importlib.metadata.requires(DIST) or []
    return {canonicalize_name(Requirement(r).name) for r in requires if f'extra == "{extra}"' in r}


def runs_only_in_tests(path: str) -> bool:
    """Test tooling shipped in ``testing/`` but never imported by the emulators users run (Azurite needs
    Node.js and Azure's client, from the ``test`` extra)."""
    return path == "airflow_provider_jobprogress/testing/azurite.py"


def test_every_third_party_import_of_the_package_is_a_declared_dependency() -> None:
    declared = declared_runtime_distributions()
    if "apache-airflow" in declared:
        declared |= PROVIDED_BY_AIRFLOW
    by_module = importlib.metadata.packages_distributions()
    undeclared: dict[str, tuple[list[str], list[str]]] = {}
    for top, files in imported_top_levels(PACKAGE).items():
        if top in sys.stdlib_module_names or top == "airflow_provider_jobprogress":
            continue
        dists = {canonicalize_name(d) for d in by_module.get(top, [])}
        if top == "airflow":
            continue  # a namespace shared by apache-airflow and its providers; providers are checked below
        allowed = declared | (declared_extra_distributions() if all(map(runs_only_in_tests, files)) else set())
        features = {OPTIONAL_FEATURES.get(f) for f in files}
        if None not in features:
            allowed |= set().union(*(declared_in_extra(str(extra)) for extra in features))
        if not dists & allowed:
            undeclared[top] = (sorted(dists), files[:3])
    assert not undeclared, f"imported but not declared: {undeclared}"


def test_airflow_providers_the_package_imports_are_declared() -> None:
    """``airflow.providers.X`` comes from apache-airflow-providers-X (common.compat, and any other)."""
    declared = declared_runtime_distributions()
    missing: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        feature = OPTIONAL_FEATURES.get(str(path.relative_to(PACKAGE.parent)))
        allowed = declared | (declared_in_extra(feature) if feature else set())
        for node in ast.walk(ast.parse(path.read_text())):
            module = node.module if isinstance(node, ast.ImportFrom) and node.level == 0 else None
            if module and module.startswith("airflow.providers."):
                provider = module.split(".")[2]
                if provider == "common":
                    provider = "-".join(module.split(".")[2:4])
                dist = canonicalize_name(f"apache-airflow-providers-{provider}")
                if dist not in allowed:
                    missing.setdefault(dist, str(path.relative_to(PACKAGE.parent)))
    assert not missing, f"provider packages imported but not declared: {missing}"


def test_project_urls_point_at_the_project_not_at_a_package_index() -> None:
    urls = importlib.metadata.metadata(DIST).get_all("Project-URL") or []
    assert not [url for url in urls if "pypi.org" in url], urls


ROOT = PACKAGE.parent
#: the Airflow versions CI tests (the Makefile's AIRFLOW_VERSIONS); each needs a constraints file per Python
TESTED_AIRFLOW = ("3.3.2", "3.1.8")


def test_requirements_are_ranges_never_pins() -> None:
    """A pin in our metadata would fight the Airflow constraints file a user installs with."""
    requirements = [Requirement(r) for r in importlib.metadata.requires(DIST) or []]
    pinned = [str(r) for r in requirements if any(s.operator in ("==", "===") for s in r.specifier)]
    assert requirements
    assert not pinned, pinned


def constraint_pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and line[0].isalnum():
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_every_tested_airflow_has_a_constraints_file_for_this_python() -> None:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    for airflow in TESTED_AIRFLOW:
        path = ROOT / "constraints" / f"airflow-{airflow}-py{python}.txt"
        assert path.is_file(), f"no {path.name}: make constraints AIRFLOW_VERSION={airflow}"
        pins = constraint_pins(path)
        assert pins.get("apache-airflow") == airflow, (path.name, pins.get("apache-airflow"))
        # every requirement the package and its test virtualenv name is pinned there (else `uv pip check` fails)
        named = {canonicalize_name(Requirement(r).name) for r in importlib.metadata.requires(DIST) or []}
        extras_in_venv = {"test", "s3"}
        for requirement in map(Requirement, importlib.metadata.requires(DIST) or []):
            marker = requirement.marker
            if marker and not any(marker.evaluate({"extra": extra}) for extra in extras_in_venv):
                named.discard(canonicalize_name(requirement.name))
        assert named <= set(pins), (path.name, sorted(named - set(pins)))


def test_the_running_environment_is_the_constrained_one() -> None:
    """The suite runs in the environment the constraints pin (make venv syncs to them): a drift means the file
    and the virtualenv disagree, and a pass here would say nothing about what CI installs."""
    import airflow

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    # `make unit` says which file it built the virtualenv from (`make upgrade-check`: a candidate, not ours)
    built_from = os.environ.get("JOBPROGRESS_CONSTRAINTS")
    path = ROOT / built_from if built_from else ROOT / "constraints" / f"airflow-{airflow.__version__}-py{python}.txt"
    if not path.is_file():
        import pytest

        pytest.skip(f"no {path.name}: this virtualenv was built without constraints")
    drift = {
        name: (version, importlib.metadata.version(name))
        for name, version in constraint_pins(path).items()
        if importlib.metadata.version(name) != version
    }
    assert not drift, f"installed versions differ from {path.name}: {drift}"
