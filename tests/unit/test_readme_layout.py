"""The README's "Layout" block and the tracked tree agree, both ways: every
directory that holds tracked files is listed to the second level, and every
directory (or top-level file) the block lists is tracked.

The block's format: an entry is a name at the start of a line (a top-level
directory ``name/`` or file) or indented by two spaces (a directory inside
the top-level directory above it); its description follows. Continuation
lines are indented further."""

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENTRY = re.compile(r"^( {0,2})(\S+)(?:\s|$)")


def layout_block(readme):
    section = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert section, "README.md has no '## Layout' section"
    block = re.search(r"^```\n(.*?)^```", section.group(1), re.M | re.S)
    assert block, "README.md's Layout section has no code block"
    return block.group(1)


def listed(block):
    """(top-level directories, second-level directories, top-level files),
    directories as 'a/' and 'a/b/'."""
    top, second, files, parent = set(), set(), set(), None
    for n, line in enumerate(block.splitlines(), 1):
        m = ENTRY.match(line)
        if not m:
            continue  # a continuation line
        indent, name = m.groups()
        if not indent:
            if name.endswith("/"):
                top.add(name)
                parent = name
            else:
                files.add(name)
                parent = None
        else:
            assert name.endswith("/") and parent, (
                f"README.md Layout line {n}: {name!r} is indented but is not a directory under a top-level "
                f"directory entry")
            second.add(parent + name)
    return top, second, files


def tracked():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout ({e}): the tracked files are unknown")
    names = [name for name in out.decode().split("\0") if name]
    top = {n.split("/")[0] + "/" for n in names if n.count("/") >= 1}
    second = {"/".join(n.split("/")[:2]) + "/" for n in names if n.count("/") >= 2}
    files = {n for n in names if "/" not in n}
    return top, second, files


def difference(what, in_tree, in_readme):
    missing, extra = sorted(in_tree - in_readme), sorted(in_readme - in_tree)
    out = []
    if missing:
        out.append(f"{what} in the tree but not in README.md's Layout: {', '.join(missing)}")
    if extra:
        out.append(f"{what} in README.md's Layout but holding no tracked file: {', '.join(extra)}")
    return out


def test_the_parser_reads_the_format():
    top, second, files = listed("a.cfg        x\ndocs/        y\n  more/      z\n             continued\nb/\n  c/ w\n")
    assert (top, second, files) == ({"docs/", "b/"}, {"docs/more/", "b/c/"}, {"a.cfg"})
    assert difference("top-level directories", {"a/", "b/"}, {"b/", "c/"}) == [
        "top-level directories in the tree but not in README.md's Layout: a/",
        "top-level directories in README.md's Layout but holding no tracked file: c/"]


def test_readme_layout_matches_the_tracked_tree():
    top, second, files = listed(layout_block((ROOT / "README.md").read_text()))
    tree_top, tree_second, tree_files = tracked()
    problems = (difference("top-level directories", tree_top, top)
                + difference("second-level directories", tree_second, second)
                + [f"top-level file in README.md's Layout but not tracked: {f}" for f in sorted(files - tree_files)])
    assert not problems, "\n".join(problems)
