"""What ``pip install .`` ships, read from pyproject's ``[tool.setuptools]`` without building a wheel: every package
folder of ``mtl_lora_vl/`` is a listed package, and the files a wheel built from this checkout holds under
``mtl_lora_vl/`` are exactly the checkout's modules, built-in specs (``tasks/*.toml`` ->
``mtl_lora_vl/builtin_tasks``) and built-in assets (``assets/`` -> ``mtl_lora_vl/assets``), nothing else (no tests,
no caches). CI installs editable, where a file left out of the wheel is still found in the checkout; this is what
would miss it. (The model of setuptools below -- a package's own ``*.py`` plus the files its ``package-data`` globs
match, folders mapped by ``package-dir`` -- was checked against a wheel built by ``pip wheel`` with setuptools
84.2.1: the same 186 files.)"""

from __future__ import annotations

import fnmatch
import importlib.resources
import tomllib
from pathlib import Path

import pytest

from mtl_lora_vl.tasks import spec as spec_module
from mtl_lora_vl.tasks.spec import SpecError, available_specs, builtin_spec_dirs, load_spec

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "mtl_lora_vl"
#: checkout folder -> where its files land in the wheel (what pyproject's package-dir maps; tested below)
SHIPPED_FOLDERS = {"mtl_lora_vl": "mtl_lora_vl", "tasks": "mtl_lora_vl/builtin_tasks",
                   "assets": "mtl_lora_vl/assets"}
#: files of those folders that are never shipped, nor need to be
NOT_SHIPPED = ("__pycache__", ".pyc", ".pyo")


def setuptools_config(root: Path = ROOT) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def package_folder(package: str, package_dir: dict[str, str]) -> str:
    """The checkout folder (relative to the root) a package is built from: its longest ``package-dir`` prefix, the
    rest of its dotted name as sub-folders (setuptools' rule)."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return "/".join([package_dir[prefix], *parts[cut:]]).strip("/")
    return "/".join([package_dir.get("", ""), *parts]).strip("/")


def wheel_files(root: Path = ROOT, cfg: dict | None = None) -> dict[str, str]:
    """``{path in the wheel: checkout path}`` of the files a wheel built from ``root`` would hold: each listed
    package's ``*.py`` files and the files its ``package-data`` globs match (``"*"`` / ``""`` keys count for every
    package)."""
    cfg = setuptools_config(root) if cfg is None else cfg
    package_dir, data = cfg.get("package-dir", {}), cfg.get("package-data", {})
    out: dict[str, str] = {}
    for package in cfg["packages"]:
        folder = package_folder(package, package_dir)
        globs = [*data.get(package, []), *data.get("*", []), *data.get("", [])]
        for path in sorted((root / folder).glob("*")):
            if path.is_file() and (path.suffix == ".py" or any(fnmatch.fnmatch(path.name, g) for g in globs)):
                out["/".join([*package.split("."), path.name])] = path.relative_to(root).as_posix()
    return out


def checkout_files(root: Path = ROOT) -> dict[str, str]:
    """``{path in the wheel: checkout path}`` of every file the wheel should hold: all of ``SHIPPED_FOLDERS``'
    files but caches."""
    out = {}
    for folder, target in SHIPPED_FOLDERS.items():
        for path in sorted((root / folder).rglob("*")):
            rel = path.relative_to(root / folder).as_posix()
            if path.is_file() and not any(part in NOT_SHIPPED or part.endswith(NOT_SHIPPED)
                                          for part in rel.split("/")):
                out[f"{target}/{rel}"] = path.relative_to(root).as_posix()
    return out


def wheel_gaps(root: Path = ROOT, cfg: dict | None = None) -> tuple[list[str], list[str]]:
    """(checkout files the wheel would leave out, wheel files that are no checkout file it should ship)."""
    want, have = checkout_files(root), wheel_files(root, cfg)
    return sorted(v for k, v in want.items() if k not in have), sorted(v for k, v in have.items() if k not in want)


def test_package_dir_maps_the_shipped_folders():
    package_dir = setuptools_config()["package-dir"]
    for folder, target in SHIPPED_FOLDERS.items():
        if folder != PACKAGE:
            assert package_dir.get(target.replace("/", ".")) == folder, (target, package_dir)


def test_every_package_folder_is_listed_and_every_listed_package_exists():
    cfg = setuptools_config()
    listed = set(cfg["packages"])
    folders = {package_folder(p, cfg.get("package-dir", {})): p for p in listed}
    missing = [p for p, f in ((p, package_folder(p, cfg.get("package-dir", {}))) for p in listed)
               if not (ROOT / f).is_dir()]
    assert not missing, f"pyproject lists packages with no folder: {missing}"
    unlisted = []
    for folder in SHIPPED_FOLDERS:
        for path in [ROOT / folder, *sorted((ROOT / folder).rglob("*"))]:
            rel = path.relative_to(ROOT).as_posix()
            if path.is_dir() and not any(part in NOT_SHIPPED for part in rel.split("/")) and rel not in folders:
                unlisted.append(rel)
    assert not unlisted, (f"folders not in pyproject's [tool.setuptools] packages, so missing from an installed "
                          f"wheel: {unlisted}; add them there (with package-data for files other than *.py)")


def test_the_wheel_holds_every_module_spec_and_asset_and_nothing_else():
    left_out, extra = wheel_gaps()
    assert not left_out, (f"pyproject's [tool.setuptools] packages / package-data leave these out of the wheel: "
                          f"{left_out}")
    assert not extra, f"the wheel would ship files that are not the package's: {extra}"
    shipped = wheel_files()
    for must in ("mtl_lora_vl/builtin_tasks/vqa.toml", "mtl_lora_vl/assets/builtin_clip/model.safetensors",
                 "mtl_lora_vl/assets/builtin_llava/config.json", "mtl_lora_vl/cli/main.py"):
        assert must in shipped


@pytest.mark.parametrize("break_it, found", [
    # a new data file of a type package-data does not name
    (lambda root, cfg: (root / "assets" / "builtin_clip" / "merges.model").write_bytes(b"x"),
     ("assets/builtin_clip/merges.model", "left out")),
    # a subpackage of modules not in the packages list
    (lambda root, cfg: cfg["packages"].remove("mtl_lora_vl.io"), ("mtl_lora_vl/io/", "left out")),
    # a glob that would ship a cache
    (lambda root, cfg: cfg["package-data"].__setitem__("mtl_lora_vl.builtin_tasks", ["*"]),
     ("tasks/notes.pyc", "extra")),
])
def test_wheel_gaps_sees_a_file_left_out_or_one_too_many(tmp_path, break_it, found):
    for folder in ("mtl_lora_vl", "tasks", "assets"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                target = tmp_path / path.relative_to(ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"")
    (tmp_path / "tasks" / "notes.pyc").write_bytes(b"")
    cfg = setuptools_config()
    assert wheel_gaps(tmp_path, cfg) == ([], [])
    break_it(tmp_path, cfg)
    left_out, extra = wheel_gaps(tmp_path, cfg)
    prefix, which = found
    assert any(f.startswith(prefix) for f in (left_out if which == "left out" else extra)), (left_out, extra)


def _installed(site: Path, monkeypatch) -> Path:
    """An installed layout: ``site/mtl_lora_vl`` (a wheel's builtin_tasks holding vqa) beside another distribution's
    top-level ``site/tasks/deploy.toml``; the spec module reads its paths from there."""
    pkg = site / "mtl_lora_vl"
    (pkg / "builtin_tasks").mkdir(parents=True)
    (pkg / "tasks").mkdir()
    (pkg / "builtin_tasks" / "vqa.toml").write_text('kind = "vqa"\n[data]\nsource = "builtin"\n')
    (site / "tasks").mkdir()
    (site / "tasks" / "deploy.toml").write_text('kind = "vqa"\n[data]\nsource = "builtin"\n')
    monkeypatch.setattr(importlib.resources, "files", lambda name: pkg)
    monkeypatch.setattr(spec_module, "__file__", str(pkg / "tasks" / "spec.py"))
    return pkg


def test_an_install_reads_no_other_distributions_tasks_folder(tmp_path, monkeypatch):
    """Installed, the package's parent is site-packages: a top-level ``tasks/`` there is another distribution's, and
    its .toml files were listed and loaded as built-in tasks (``available_specs()`` held ``deploy``)."""
    pkg = _installed(tmp_path / "site-packages", monkeypatch)
    assert builtin_spec_dirs() == [pkg / "builtin_tasks"]
    assert available_specs() == ["vqa"]
    with pytest.raises(SpecError, match="unknown task 'deploy'"):
        load_spec("deploy")


def test_a_checkout_still_reads_its_tasks_folder(tmp_path, monkeypatch):
    """Beside a pyproject.toml (a checkout; an editable install runs from one) ``tasks/`` holds the built-in specs."""
    pkg = _installed(tmp_path / "checkout", monkeypatch)
    (tmp_path / "checkout" / "pyproject.toml").write_text("")
    assert builtin_spec_dirs() == [pkg / "builtin_tasks", tmp_path / "checkout" / "tasks"]
    assert available_specs() == ["deploy", "vqa"]
