"""Cross-references into docs/PROTOCOL.md resolve, and nothing cites a protocol file outside the repository.

The code cites the protocol as "docs/PROTOCOL.md §N.M"; a section that is renamed away, or a
reference mistyped, would leave a maintainer with nowhere to look. No Redis needed.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "docs" / "PROTOCOL.md"
# Everything a maintainer reads: the package, the tests, the scripts, the docs and the README.
SEARCHED = ("workerd", "tests", "scripts", "benchmarks", "examples", "docs", "README.md", "CHANGELOG.md")
SUFFIXES = {".py", ".md", ".sh", ".toml", ".txt"}
# The file the references used to name, which is not in the repository (spelled in two parts so
# that this test does not find itself).
OUTSIDE_FILE = "rq-" + "protocol"

_HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", re.MULTILINE)
_SECTION = re.compile(r"§(\d+(?:\.\d+)?)")


def _files() -> list[Path]:
    found: list[Path] = []
    for name in SEARCHED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        found += [p for p in candidates if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts]
    return found


def _sections() -> list[str]:
    return _HEADING.findall(PROTOCOL.read_text(encoding="utf-8"))


def _references(text: str, every_line: bool) -> list[tuple[int, str]]:
    """(line number, section) of each "§N.M" on lines that name PROTOCOL.md (or on every line)."""
    refs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if every_line or "PROTOCOL.md" in line:
            refs += [(number, section) for section in _SECTION.findall(line)]
    return refs


def test_sections_are_numbered_once() -> None:
    sections = _sections()
    assert len(sections) > 40, "docs/PROTOCOL.md lost its numbered headings"
    assert len(sections) == len(set(sections)), f"a section number is used twice: {sections}"


def test_every_reference_names_a_section_that_exists() -> None:
    sections = set(_sections())
    broken = []
    for path in _files():
        text = path.read_text(encoding="utf-8", errors="replace")
        # Inside PROTOCOL.md itself every "§" is a reference into it.
        for line, section in _references(text, every_line=path == PROTOCOL):
            if section not in sections:
                broken.append(f"{path.relative_to(ROOT)}:{line}: §{section}")
    assert not broken, "references to sections docs/PROTOCOL.md does not have:\n" + "\n".join(broken)


def test_the_code_cites_the_protocol() -> None:
    cited = [p for p in _files() if p != PROTOCOL and _references(p.read_text(encoding="utf-8"), every_line=False)]
    assert len(cited) >= 14, f"expected the code to cite docs/PROTOCOL.md; only {len(cited)} files do"


def test_no_reference_to_a_protocol_file_outside_the_repository() -> None:
    stale = []
    for path in _files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if OUTSIDE_FILE in line:
                stale.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not stale, "cite docs/PROTOCOL.md instead:\n" + "\n".join(stale)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_to_sections_have_their_anchor() -> None:
    anchors = {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", PROTOCOL.read_text(encoding="utf-8"), re.MULTILINE)}
    broken = []
    for path in _files():
        text = path.read_text(encoding="utf-8", errors="replace")
        pattern = r"\]\(#([^)]+)\)" if path == PROTOCOL else r"PROTOCOL\.md#([^)\s]+)"
        broken += [f"{path.relative_to(ROOT)}: #{a}" for a in re.findall(pattern, text) if a not in anchors]
    assert not broken, "links to anchors docs/PROTOCOL.md does not have:\n" + "\n".join(broken)


def test_readme_lists_the_protocol() -> None:
    documentation = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Documentation\n")[1].split("\n## ")[0]
    assert "[docs/PROTOCOL.md](docs/PROTOCOL.md)" in documentation
