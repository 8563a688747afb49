"""The app talks to hardware only through the board layer: every board
attribute the app uses exists on every board: the ESP32 one (which cannot
run here: no ESP32), the simulator's, and the unix-port test board. Checked
on the source, without importing MicroPython-only modules."""

import ast
import pathlib

from mpy_runner import APP

SIM = APP.parent / "sim" / "board.py"
UNIX = APP.parents[1] / "tools" / "unixport" / "board_unix.py"
BOARD_ONLY = {"board_esp32.py", "main.py"}


def used_board_attributes():
    used = {}
    for path in sorted(APP.glob("*.py")):
        if path.name in BOARD_ONLY:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute)):
                base = node.value
                name = base.id if isinstance(base, ast.Name) else base.attr
                if name == "board":
                    used.setdefault(node.attr, set()).add(path.name)
    return used


BOARDKIT = APP / "boardkit.py"


def provided(path, class_name):
    """Methods and self-attributes of the class, with those of its bases
    (found in the same file or in boardkit, where boards share code)."""
    tree = ast.parse(pathlib.Path(path).read_text())
    found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    if not found:
        assert path != BOARDKIT, f"no class {class_name} in {path} or {BOARDKIT}"
        return provided(BOARDKIT, class_name)
    cls = found[0]
    names = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for base in cls.bases:
        if isinstance(base, ast.Name):
            names |= provided(path, base.id)
    for node in ast.walk(cls):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                    names.add(target.attr)
    return names


def test_the_app_uses_a_board_layer():
    used = used_board_attributes()
    assert {"mac", "fs", "modbus", "wifi_connect", "reset", "firmware_writer"} <= set(used)


def test_esp32_board_provides_everything_the_app_uses():
    missing = {a: sorted(w) for a, w in used_board_attributes().items()
               if a not in provided(APP / "board_esp32.py", "Esp32Board")}
    assert not missing, f"board_esp32.Esp32Board lacks {missing}"


def test_host_board_provides_everything_the_app_uses():
    missing = {a: sorted(w) for a, w in used_board_attributes().items() if a not in provided(SIM, "HostBoard")}
    assert not missing, f"firmware/sim HostBoard lacks {missing}"


def test_unix_port_board_provides_everything_the_app_uses():
    missing = {a: sorted(w) for a, w in used_board_attributes().items() if a not in provided(UNIX, "UnixBoard")}
    assert not missing, f"tools/unixport UnixBoard lacks {missing}"
