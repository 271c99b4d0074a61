"""The docs' references resolve inside the repository.

Why: a README or docstring that points at a file which does not exist (or at a folder on
the machine the docs were written on) sends a newcomer nowhere. Every relative Markdown link
in README.md and docs/ must name a file of the repo (and, with `#anchor`, one of its
headings); no tracked text file may point at a path outside the checkout.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"```.*?```", re.S)
# Paths of the machines the project was written on: nothing in the repo may depend on them.
_OUTSIDE = re.compile(r"/work/(?:shared|main|wt)\b|\.\./shared/")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"#{1,6} (.*)", line)
        if match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def _broken_links(doc: Path, root: Path = REPO) -> list[str]:
    broken = []
    for target in _LINK.findall(_FENCE.sub("", doc.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists() or root not in dest.parents:
            broken.append(f"{target} (no such file in the repo)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with that anchor)")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc: Path) -> None:
    assert _broken_links(doc) == []


def test_a_broken_link_is_caught(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n[ok](a.md#title) [gone](missing.md) [bad](a.md#nope)\n")
    assert len(_broken_links(tmp_path / "a.md", tmp_path)) == 2


def test_no_tracked_file_points_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode().split("\0")
    offenders = []
    for name in filter(None, tracked):
        path = REPO / name
        if path.suffix not in {".py", ".md", ".sh", ".toml", ".txt", ".json", ".yaml", ".yml"} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if _OUTSIDE.search(line) and path != Path(__file__).resolve():
                offenders.append(f"{name}:{number}: {line.strip()[:120]}")
    assert offenders == []
