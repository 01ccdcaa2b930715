"""The wheel is what a user of the library expects.

Builds the wheel with ``python -m build`` (an isolated build environment: the build-system
requirements of pyproject.toml, from the package index), installs it with ``--no-deps`` into a
fresh virtual environment (no torch there: nothing is downloaded), and checks that it holds both
import packages, the LICENSE, the version from ``asymgrpo_kernels/_version.py`` and the
``asymgrpo`` console script, and that ``import asymgrpo`` works without torch.

The build runs on a copy of the files it needs (pyproject.toml, README.md, LICENSE and the two
packages), so it leaves no build/ or egg-info folder in the repository.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "asymgrpo", "asymgrpo_kernels")


def source_version() -> str:
    """``__version__`` as written in asymgrpo_kernels/_version.py, read without importing it."""
    tree = ast.parse((ROOT / "asymgrpo_kernels" / "_version.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("asymgrpo_kernels/_version.py does not assign __version__")


def run(command: list[str], cwd: Path, timeout: float = 300) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        pytest.fail(f"{' '.join(command)} failed (exit {result.returncode}):\n{output}", pytrace=False)
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
        else:
            shutil.copy2(path, source / name)
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(work / "dist"), str(source)], cwd=work)
    wheels = sorted((work / "dist").glob("*.whl"))
    assert len(wheels) == 1, f"expected one wheel, got {wheels}"
    return wheels[0]


def test_wheel_contents_and_metadata(wheel: Path) -> None:
    version = source_version()
    assert wheel.name == f"asymgrpo-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = f"asymgrpo-{version}.dist-info"
        metadata = HeaderParser().parsestr(archive.read(f"{dist_info}/METADATA").decode("utf-8"))
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode("utf-8")
        license_text = archive.read(f"{dist_info}/licenses/LICENSE").decode("utf-8")

    for module in (
        "asymgrpo/__init__.py",
        "asymgrpo/cli.py",
        "asymgrpo/config.py",
        "asymgrpo/trainer.py",
        "asymgrpo/demo/__init__.py",
        "asymgrpo_kernels/__init__.py",
        "asymgrpo_kernels/_version.py",
        "asymgrpo_kernels/triton/__init__.py",
    ):
        assert module in names, f"{module} is missing from the wheel"
    assert any(n.startswith("asymgrpo_kernels/triton/") and not n.endswith("__init__.py") for n in names)
    # Only the two import packages and the metadata: no tests, docs or benchmarks.
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"asymgrpo", "asymgrpo_kernels", dist_info}, tops

    assert metadata["Name"] == "asymgrpo"
    assert metadata["Version"] == version
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert license_text == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "[console_scripts]" in entry_points
    assert "asymgrpo = asymgrpo.cli:main" in entry_points
    # `import verl` loads this group: the asymgrpo estimator and policy loss (docs/verl.md)
    assert "[verl.plugins]" in entry_points
    assert "asymgrpo = asymgrpo.integrations.verl" in entry_points
    for module in ("asymgrpo/integrations/trl/__init__.py", "asymgrpo/integrations/verl/__init__.py"):
        assert module in names, f"{module} is missing from the wheel"
    extras = metadata.get_all("Provides-Extra")
    assert {"trl", "verl", "verl-runtime"} <= set(extras), extras


def test_wheel_installs_and_imports_without_torch(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-index", str(wheel)],
        cwd=tmp_path,
    )
    probe = (
        "import importlib.metadata as md, json, sys\n"
        "import asymgrpo\n"
        "scripts = [ep.value for ep in md.entry_points(group='console_scripts') if ep.name == 'asymgrpo']\n"
        "print(json.dumps({'version': asymgrpo.__version__, 'file': asymgrpo.__file__,\n"
        "                  'dist_version': md.version('asymgrpo'), 'scripts': scripts,\n"
        "                  'torch': 'torch' in sys.modules, 'kernels': 'asymgrpo_kernels' in sys.modules}))\n"
    )
    # -I: the venv's site-packages only (not the working directory, not PYTHONPATH).
    found = json.loads(run([str(python), "-I", "-c", probe], cwd=tmp_path).strip().splitlines()[-1])
    version = source_version()
    assert found["version"] == version == found["dist_version"], found
    assert Path(found["file"]).resolve().is_relative_to(venv.resolve()), found["file"]
    assert found["scripts"] == ["asymgrpo.cli:main"], found
    assert not found["torch"] and not found["kernels"], "import asymgrpo must stay light"
    assert (bin_dir / ("asymgrpo.exe" if os.name == "nt" else "asymgrpo")).exists()


def test_install_script_pins_verl_as_the_extra_does() -> None:
    """scripts/install.sh installs verl without its dependencies at the `verl` extra's version: one pin."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    (verl,) = extras["verl"]
    assert verl.startswith("verl=="), verl
    script = (ROOT / "scripts" / "install.sh").read_text(encoding="utf-8")
    assert '["optional-dependencies"]["verl"][0]' in script and "--no-deps" in script
    import importlib.metadata as md

    assert md.version("verl") == verl.removeprefix("verl=="), "this environment runs the pinned verl"
    (trl,) = [r for r in extras["trl"] if r.startswith("trl")]
    assert md.version("trl") == trl.removeprefix("trl=="), "this environment runs the pinned TRL"


def test_version_in_this_environment() -> None:
    import asymgrpo

    assert asymgrpo.__version__ == source_version()
