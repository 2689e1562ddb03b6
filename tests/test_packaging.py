"""The wheel users install (docs/install.md) holds every package, the package data (the
history.js helper, py.typed) and the ``trio-channels`` command, and works outside the
repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TOP_LEVEL = ("channels", "presence", "supervisor")


def test_every_package_is_listed() -> None:
    on_disk = sorted(
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in TOP_LEVEL for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts)
    assert sorted(PYPROJECT["tool"]["setuptools"]["packages"]) == on_disk


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built by pip from a copy of the sources (no build output in the tree)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for top in TOP_LEVEL:
        shutil.copytree(ROOT / top, src / top,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "-q", str(src), "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("trio_channels-*.whl")
    return built


def test_the_wheel_holds_the_packages_and_their_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("channels/static/history.js", "channels/py.typed", "presence/py.typed",
                 "supervisor/py.typed", "channels/client/__init__.py",
                 "channels/client/socket.py", "channels/testing.py", "channels/tokens.py",
                 "presence/tracker.py", "supervisor/_actor.py"):
        assert path in names, f"{path} is not in {wheel.name}"
    for top in TOP_LEVEL:
        for module in (ROOT / top).rglob("*.py"):
            rel = module.relative_to(ROOT).as_posix()
            assert rel in names, f"{rel} is not in {wheel.name}"
    assert not any(n.startswith(("tests/", "docs/", "examples/", "bench/")) for n in names)
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "trio-channels = channels.cli:main" in entry_points


def test_the_installed_wheel_works_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                    "--disable-pip-version-check", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    # -S: no site processing, so the checkout's editable install is not seen; the wheel's
    # packages come first, the dependencies from this venv's site-packages after them.
    deps = sysconfig.get_paths()["purelib"]
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import channels, channels.client, channels.testing, channels.redis, presence\n"
        "from channels.endpoint import HISTORY_JS\n"
        "assert channels.__file__.startswith(sys.argv[1]), channels.__file__\n"
        "assert HISTORY_JS.is_file() and str(HISTORY_JS).startswith(sys.argv[1])\n"
        "from channels.cli import main\n"
        "sys.argv = ['trio-channels', '--help']\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(target), deps],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "serve" in proc.stdout and "client" in proc.stdout
