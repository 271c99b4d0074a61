"""Code and scripts that cite the docs cite files that exist.

Docstrings once sent readers to one machine's shared docs folder; they now cite
repo-relative `docs/<name>.md` files, and a renamed or missing page must fail here.
(Markdown links, and paths outside the checkout anywhere, are tests/test_docs.py's.)
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE_SUFFIXES = (".py", ".md", ".sh", ".toml", ".cfg", ".txt")
DOC_REF = re.compile(r"(?<![\w/.])docs/[\w./-]+\.md")


def _tracked_sources() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    files = [REPO / name for name in out.splitlines() if name.endswith(SOURCE_SUFFIXES) or name == "Makefile"]
    return [f for f in files if f.is_file()]


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


def test_the_scan_sees_the_references_it_checks() -> None:
    """The check above would pass vacuously if the scan found nothing."""
    cited = {m.group(0) for f in _tracked_sources() for m in DOC_REF.finditer(f.read_text(errors="replace"))}
    assert {"docs/protocols.md", "docs/engines-on-cpu.md"} <= cited
