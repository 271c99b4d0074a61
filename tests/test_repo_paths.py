"""Every file reference in the code resolves inside the repository.

Code and docstrings once pointed at absolute paths of one machine's shared docs folder,
which no other checkout has. References to the docs are repo-relative (`docs/<name>.md`) and
must name a file that exists.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE_SUFFIXES = (".py", ".md", ".sh", ".toml", ".cfg", ".txt")
DOC_REF = re.compile(r"(?<![\w/.])docs/[\w./-]+\.md")
OUTSIDE_REF = re.compile(r"/work/[\w./-]+")


def _tracked_sources() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [REPO / name for name in out.splitlines() if name.endswith(SOURCE_SUFFIXES) or name == "Makefile"]
    return [f for f in files if f.is_file()]


def test_no_reference_points_outside_the_repository() -> None:
    found = [
        f"{f.relative_to(REPO)}: {m.group(0)}"
        for f in _tracked_sources()
        for m in OUTSIDE_REF.finditer(f.read_text(errors="replace"))
    ]
    assert not found, "absolute paths outside the repo (point at docs/ instead):\n" + "\n".join(found)


def test_doc_references_name_existing_files() -> None:
    missing = sorted(
        {
            f"{f.relative_to(REPO)}: {m.group(0)}"
            for f in _tracked_sources()
            for m in DOC_REF.finditer(f.read_text(errors="replace"))
            if not (REPO / m.group(0)).is_file() and not (f.parent / m.group(0)).is_file()
        }
    )
    assert not missing, "references to docs that do not exist:\n" + "\n".join(missing)
