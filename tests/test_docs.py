"""The code cites ``docs/math.md`` and ``docs/architecture.md`` by section ("Counting multiply-adds"):
every cited section exists, so a reader following a docstring finds what it points to."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("math", "architecture")
# docs/math.md``, "Counting multiply-adds" -- the title may wrap over lines (and "#" comment marks)
CITATION = re.compile(r'docs/(math|architecture)\.md`*\)?,?\s*"([^"]+)"')


def sections(doc: str) -> set[str]:
    text = (ROOT / "docs" / f"{doc}.md").read_text()
    return {m.group(1).strip() for m in re.finditer(r"^#{2,3} (.+)$", text, re.M)}


def citing_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("factorch", "benchmarks", "examples", "tests"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def citations() -> list[tuple[str, str, str]]:
    """``(file, doc, section)`` for every citation, the section's line breaks and comment marks
    joined back into one title."""
    out = []
    for path in citing_files():
        for m in CITATION.finditer(path.read_text()):
            title = re.sub(r"\s*\n\s*#?\s*", " ", m.group(2)).strip()
            out.append((str(path.relative_to(ROOT)), m.group(1), title))
    return out


def test_the_code_cites_the_docs():
    """Not vacuous: the pattern finds the citations the package is known to make."""
    found = {(doc, title) for _, doc, title in citations()}
    assert ("math", "Counting multiply-adds") in found and ("math", "Deployment") in found
    assert len(found) >= 10


@pytest.mark.parametrize("doc", DOCS)
def test_every_cited_section_exists(doc):
    have = sections(doc)
    missing = sorted({(f, title) for f, d, title in citations() if d == doc and title not in have})
    assert not missing, f"docs/{doc}.md has no section for: {missing}"
