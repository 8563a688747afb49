"""Run one entry point of a role in check mode with ansible-playbook and a
local connection, as a test: the role's own checks against inventory-like
variables, without a target."""

import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLAY = """
- name: The {role} role's {tasks_from} entry point only
  hosts: controller
  gather_facts: false
  tasks:
    - name: Run the {tasks_from} entry point
      ansible.builtin.include_role:
        name: {role}
        tasks_from: {tasks_from}
"""


def check_entry_point(tmp_path, role, tasks_from, host, secrets, extra):
    """(returncode, output with whitespace collapsed, changed count or None).
    *extra* goes in as JSON extra vars, so numbers stay numbers as in an
    inventory."""
    (tmp_path / "play.yml").write_text(PLAY.format(role=role, tasks_from=tasks_from))
    (tmp_path / "hosts.yml").write_text(
        f"all:\n  children:\n    controller:\n      hosts:\n        {host}:\n"
        f"          ansible_connection: local\n          ansible_python_interpreter: {sys.executable}\n")
    args = [str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "--check", "-i", str(tmp_path / "hosts.yml"),
            str(tmp_path / "play.yml"), "-e", "edgefleet_site=lab", "-e", f"edgefleet_secrets_dir={secrets}"]
    if extra:
        args += ["-e", json.dumps(extra)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                              "ANSIBLE_NOCOLOR": "1", "HOME": str(tmp_path)})
    out = run.stdout + run.stderr
    recap = re.search(rf"{re.escape(host)}\s*:\s*ok=\d+\s+changed=(\d+)", out)
    return run.returncode, " ".join(out.split()), (int(recap.group(1)) if recap else None), out
