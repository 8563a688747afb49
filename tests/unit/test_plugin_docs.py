"""Every plugin's documentation renders with ansible-doc (docs/architecture.md,
section 7 (tests), and section 5: action plugins document themselves in a
stub under plugins/modules/)."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLUGINS = [("inventory", p.stem) for p in sorted((ROOT / "plugins" / "inventory").glob("*.py"))] + \
          [("module", p.stem) for p in sorted((ROOT / "plugins" / "modules").glob("*.py"))]


@pytest.mark.parametrize("kind,name", PLUGINS, ids=[f"{k}:{n}" for k, n in PLUGINS])
def test_ansible_doc_renders(kind, name):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    run = subprocess.run([str(pathlib.Path(sys.executable).parent / "ansible-doc"), "-t", kind, "edgefleet.site." + name],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert name in run.stdout and "OPTIONS" in run.stdout and "EXAMPLES" in run.stdout
