"""The repository's structure, read from the code's own imports (ast), as
docs/architecture.md, section 2 states it:

- plugins/module_utils holds two kinds of file: the device contract (runs on
  MicroPython, imports nothing, packed into every image; its docstring
  starts with "Device contract:") and Ansible-side logic ("Ansible side:").
  firmware.common.CONTRACT_MODULES lists the contract once: the image packs
  exactly those files and the flash_station role copies exactly those;
- firmware/image never imports firmware/sim (the simulator uses the image,
  not the other way round; what both need is in firmware/common.py);
- no plugin imports the simulator;
- nothing under tools/ or bench/ imports from tests/ or puts tests/ on
  sys.path."""

import ast
import pathlib

import pytest
import yaml

import firmware.image as image
from firmware import common
from mpy_runner import compile_app, run_micropython

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULE_UTILS = ROOT / "plugins" / "module_utils"
CONTRACT_TAG, ANSIBLE_TAG = "Device contract:", "Ansible side:"


def py_files(*dirs):
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def imported(path):
    """Every module name *path* imports (see imports_of)."""
    return imports_of(path.read_text(), ".".join(path.relative_to(ROOT).parent.parts), str(path))


def imports_of(source, package, where="<source>"):
    """Every module name *source* (a module of *package*) imports, anywhere
    in it, dotted and absolute where the import is relative (``from . import
    fleet`` in firmware.sim -> firmware.sim.fleet), with the names a ``from``
    import takes (``from firmware import sim`` -> firmware.sim)."""
    names = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names.append(base)
            names += [base + "." + a.name for a in node.names]
    return names


def under(name, package):
    return name == package or name.startswith(package + ".")


def test_the_import_reader_sees_every_form_of_import():
    """The checks below rest on imports_of(): it must see plain, from,
    relative and function-level imports (where a forbidden one would hide),
    or they would pass on anything."""
    source = ("def f():\n    import firmware.sim\n    from firmware import sim\n    from .. import sim as s\n"
              "from ..sim import fleet\n")
    names = imports_of(source, "firmware.image")
    assert names.count("firmware.sim") == 4 and "firmware.sim.fleet" in names, names  # one per statement


def module_docstring_first_line(path):
    doc = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
    return doc.splitlines()[0] if doc else ""


def test_every_module_utils_file_says_whether_it_is_the_device_contract():
    contract, other, unmarked = set(), set(), []
    for path in sorted(MODULE_UTILS.glob("*.py")):
        first = module_docstring_first_line(path)
        if first.startswith(CONTRACT_TAG):
            contract.add(path.stem)
        elif first.startswith(ANSIBLE_TAG):
            other.add(path.stem)
        else:
            unmarked.append(path.name)
    assert not unmarked, (f"{unmarked}: the first line of the module docstring must start with {CONTRACT_TAG!r} "
                          f"(and the module be in firmware.common.CONTRACT_MODULES) or {ANSIBLE_TAG!r}")
    assert contract == set(common.CONTRACT_MODULES), (
        f"marked {CONTRACT_TAG!r}: {sorted(contract)}; firmware.common.CONTRACT_MODULES: {common.CONTRACT_MODULES}")


def test_the_image_packs_exactly_the_device_contract_of_module_utils():
    packed = {p.resolve() for p in image.app_sources() if p.resolve().parent == MODULE_UTILS}
    assert packed == {MODULE_UTILS / f"{m}.py" for m in common.CONTRACT_MODULES}


def test_the_flash_station_copies_the_device_contract_and_what_the_image_imports():
    """The station builds images from its own copy of the sources: it needs
    every repository module that firmware.image imports (firmware/common.py
    among them), and of module_utils exactly the contract."""
    role_vars = yaml.safe_load((ROOT / "roles" / "flash_station" / "vars" / "main.yml").read_text())
    dirs, files = role_vars["_flash_station_source_dirs"], role_vars["_flash_station_source_files"]
    copied = {p.relative_to(ROOT).as_posix() for p in py_files(*dirs)} | set(files)
    assert {f for f in files if f.startswith("plugins/module_utils/")} == {
        f"plugins/module_utils/{m}.py" for m in common.CONTRACT_MODULES}
    needed, unread = set(), [ROOT / "firmware" / "image" / "__init__.py", ROOT / "firmware" / "image" / "__main__.py"]
    while unread:
        path = unread.pop()
        rel = path.relative_to(ROOT).as_posix()
        if rel in needed:
            continue
        needed.add(rel)
        for name in imported(path):
            if under(name, "firmware"):
                for candidate in (ROOT / (name.replace(".", "/") + ".py"), ROOT / name.replace(".", "/") / "__init__.py"):
                    if candidate.is_file():
                        unread.append(candidate)
    assert needed - copied == set(), "firmware.image imports files the flash_station role does not copy"


@pytest.mark.parametrize("name", common.CONTRACT_MODULES)
def test_each_contract_file_imports_alone_on_micropython(name, tmp_path):
    """Compiled by mpy-cross and imported under MicroPython with no sibling
    beside it: it needs nothing of module_utils (nor of the app)."""
    compile_app(tmp_path, [name])
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.mpy"]
    assert run_micropython(f"import {name}\nprint('ok', {name}.__name__)", tmp_path).split() == ["ok", name]


def test_the_architecture_names_both_sets_of_module_utils():
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## 2. "):text.index("## 3. ")]
    for path in MODULE_UTILS.glob("*.py"):
        assert f"`{path.stem}" in section, f"docs/architecture.md, section 2 does not name {path.name}"


def test_the_image_does_not_import_the_simulator():
    found = [(p.relative_to(ROOT).as_posix(), n) for p in py_files("firmware/image") for n in imported(p)
             if under(n, "firmware.sim")]
    assert not found, found


def test_what_the_image_and_the_simulator_share_imports_neither():
    found = [n for n in imported(ROOT / "firmware" / "common.py") if under(n, "firmware.sim") or under(n, "firmware.image")]
    assert not found, found


def test_no_plugin_imports_the_simulator():
    found = [(p.relative_to(ROOT).as_posix(), n) for p in py_files("plugins") for n in imported(p)
             if under(n, "firmware.sim")]
    assert not found, found


def mentions_tests(node):
    return any(isinstance(n, ast.Constant) and isinstance(n.value, str) and
               (n.value == "tests" or n.value.startswith("tests/") or "/tests/" in n.value or n.value.endswith("/tests"))
               for n in ast.walk(node))


def sys_path_changes(tree):
    """The expressions put on sys.path: sys.path.insert/append/extend(...)
    arguments and what is assigned to sys.path or a slice of it."""
    def is_sys_path(node):
        if isinstance(node, ast.Subscript):
            node = node.value
        return isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) and \
            node.value.id == "sys"

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("insert", "append", "extend") and is_sys_path(node.func.value):
            yield node
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(is_sys_path(t) for t in targets):
                yield node.value


def test_tools_and_benchmarks_take_nothing_from_tests():
    test_modules = {p.stem for p in py_files("tests")}
    own = {p.stem for p in py_files("tools", "bench")}
    problems = []
    for path in py_files("tools", "bench"):
        rel = path.relative_to(ROOT).as_posix()
        for name in imported(path):
            top = name.split(".")[0]
            if top == "tests" or (top in test_modules and top not in own):
                problems.append(f"{rel} imports {name} (a module of tests/)")
        for change in sys_path_changes(ast.parse(path.read_text())):
            if mentions_tests(change):
                problems.append(f"{rel} puts tests/ on sys.path (line {change.lineno})")
    assert not problems, problems
