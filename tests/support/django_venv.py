"""The isolated venv of the Django example's tests, ``.venv-django``.

Django is not a dependency of trio-channels, so it never goes into ``.venv``: like the client
matrix's ``.venv-clients`` (tests/matrix/support.py), the tests create a venv of their own with
the example's pinned requirements (examples/django_notify/requirements.txt) and trio-channels'
runtime dependencies at the versions of requirements.lock. trio-channels itself comes from the
working tree (``PYTHONPATH``), so the venv never holds a stale copy. A stamp (the sha256 of
what was installed) makes this quick when nothing changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "django_notify"
REQUIREMENTS = EXAMPLE / "requirements.txt"
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
VENV = ROOT / ".venv-django"
_STAMP = VENV / ".django-requirements-sha256"


def runtime_dependencies() -> list[str]:
    """trio-channels' own dependencies (pyproject.toml), without their version ranges: the
    lock decides the versions."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return [str(dep) for dep in project["dependencies"]]


def django_python() -> Path:
    return VENV / "bin" / "python"


def ensure_django_venv(python: str | None = None,
                       log: Callable[[str], None] | None = None) -> Path:
    """Create or update ``.venv-django``; returns its interpreter."""
    say = log or (lambda msg: print(f"[setup] {msg}", file=sys.stderr, flush=True))
    digest = hashlib.sha256()
    for path in (REQUIREMENTS, LOCK, PYPROJECT):
        digest.update(path.read_bytes())
    want = digest.hexdigest()
    py = django_python()
    if py.exists() and _STAMP.exists() and _STAMP.read_text().strip() == want:
        return py
    if not py.exists():
        base = python or os.environ.get("PYTHON") or sys.executable
        say(f"creating .venv-django (the Django example's tests, isolated) with {base}")
        subprocess.run([base, "-m", "venv", "--clear", str(VENV)], check=True)
    say("installing Django and trio-channels' runtime dependencies into .venv-django...")
    subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check",
                    "--progress-bar", "off", "-q", "-c", str(LOCK), "-r", str(REQUIREMENTS),
                    *runtime_dependencies()],
                   check=True, stdout=sys.stderr)
    subprocess.run([str(py), "-m", "pip", "check", "--disable-pip-version-check"],
                   check=True, stdout=sys.stderr)
    _STAMP.write_text(want + "\n")
    say(".venv-django ready")
    return py


if __name__ == "__main__":
    ensure_django_venv()
