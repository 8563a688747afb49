"""The repository stands alone: no tracked file cites the team's design map
or field notes, which live outside the repository and which a clone does
not have. The project's own architecture is docs/architecture.md; cite it
by section (docs/architecture.md, section 2)."""

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Spelled in pieces so that this file does not cite what it forbids.
_DESIGN = "DESI" + "GN"
_NOTES = "FIELD" + "-NOTES"
CITATION = re.compile(r"\b%s(\.md\b|\s*§|\s+sections?\b)|\b%s\b" % (_DESIGN, _NOTES))


def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout ({e}): the tracked files are unknown")
    return [ROOT / name for name in out.decode().split("\0") if name]


def citations(path):
    """(line number, line) of each citation in a tracked text file."""
    if path.is_symlink() or not path.is_file():
        return []
    data = path.read_bytes()
    if b"\0" in data:
        return []
    text = data.decode("utf-8", errors="replace")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if CITATION.search(line)]


def test_the_pattern_finds_citations():
    for line in (f"see {_DESIGN}.md section 6", f"({_DESIGN} §3)", f"a {_DESIGN} section 3 payload",
                 f"({_NOTES}: the pipe stalls)"):
        assert CITATION.search(line), line
    for line in ("design of the broker", "DESIGNATED", "docs/architecture.md, section 3"):
        assert not CITATION.search(line), line


def test_no_tracked_file_cites_documents_outside_the_repository():
    found = [f"{path.relative_to(ROOT)}:{n}: {line}"
             for path in tracked_files() for n, line in citations(path)]
    assert not found, ("these lines cite documents that live outside the repository; cite "
                       "docs/architecture.md (by section) instead:\n  " + "\n  ".join(found))


def test_architecture_doc_has_the_numbered_sections_citations_use():
    """Citations name sections by number: every number cited exists."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", doc, re.M))
    # a citation may wrap onto the next line, also inside a comment or a docstring
    gap = r"[\s#]+"
    cited = re.compile(r"docs/architecture\.md,%ssections?%s(\d+(?:\.\d+)?)(?:%sand%s(\d+(?:\.\d+)?))?"
                       % (gap, gap, gap, gap))
    missing = []
    for path in tracked_files():
        if path.is_symlink() or not path.is_file() or path.suffix not in (".md", ".py", ".yml", ".j2", ".sh", ""):
            continue
        text = path.read_text(errors="replace")
        for match in cited.finditer(text):
            n = text.count("\n", 0, match.start()) + 1
            missing += [f"{path.relative_to(ROOT)}:{n}: section {s}" for s in match.groups()
                        if s and s not in sections]
    assert not missing, "citations of sections docs/architecture.md does not have:\n  " + "\n  ".join(missing)
