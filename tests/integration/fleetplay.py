"""Run the fleet playbooks (configure.yml, ota.yml) with the real
ansible-playbook against the integration tests' site: a real Mosquitto with
the role's ACL and simulated devices running in the test's event loop while
the playbook runs in a child process."""

import asyncio
import json
import os
import pathlib
import sys

import yaml

from simsite import SERVICE, SITE

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent


def write_inventory(path, broker, devices, group_vars=None, host_vars=None, controller=None):
    """A site inventory for *devices* [(id, kind, mac)] on the test broker
    (plain listener, the controller user's password in mosquitto_passwords);
    *controller*, if given, is the host vars of a site controller ctl01 in
    the controller group."""
    path = pathlib.Path(path)
    kinds = {}
    for device_id, kind, mac in devices:
        kinds.setdefault(kind, {})[device_id] = {"device_mac": mac}
    hosts = {"all": {"children": {"fleet": {"children": {k: {"hosts": h} for k, h in kinds.items()}}}}}
    if controller is not None:
        hosts["all"]["children"]["controller"] = {"hosts": {"ctl01": controller}}
    (path / "group_vars" / "all").mkdir(parents=True, exist_ok=True)
    (path / "hosts.yml").write_text(yaml.safe_dump(hosts))
    # Written as site inventories write them: templates, which the fleet
    # plugins must resolve (the lab found one that did not).
    site = {"edgefleet_site": SITE, "edgefleet_broker_host": "127.0.0.1",
            "edgefleet_broker_port": "{{ test_broker_port }}", "test_broker_port": broker.port,
            "edgefleet_fleet_tls": False, "edgefleet_secrets_dir": "{{ inventory_dir | dirname }}/secrets",
            "mosquitto_passwords": {"controller": "{{ test_controller_password }}"},
            "test_controller_password": SERVICE["controller"]}
    (path / "group_vars" / "all" / "site.yml").write_text(yaml.safe_dump(site))
    for group, values in (group_vars or {}).items():
        (path / "group_vars" / f"{group}.yml").write_text(yaml.safe_dump(values))
    if host_vars:
        (path / "host_vars").mkdir(exist_ok=True)
        for host, values in host_vars.items():
            (path / "host_vars" / f"{host}.yml").write_text(yaml.safe_dump(values))
    return path


class Play:
    """One ansible-playbook run; its JSON result (ansible.posix.json callback)."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr
        self.data = None
        start = stdout.find("{")
        if start >= 0:
            try:
                self.data = json.loads(stdout[start:])
            except ValueError:
                pass

    def task(self, name_part):
        """The first host's result of the first task whose name contains *name_part*."""
        assert self.data is not None, f"no JSON result:\n{self.stdout}\n{self.stderr}"
        for play in self.data["plays"]:
            for task in play["tasks"]:
                if name_part in task["task"]["name"]:
                    return next(iter(task["hosts"].values()))
        raise AssertionError(f"no task named like {name_part!r}")

    def __repr__(self):
        return f"Play(rc={self.returncode})\n{self.stdout[-4000:]}\n{self.stderr[-2000:]}"


def play_env(extra=None):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_NOCOLOR="1", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    env.update(extra or {})
    return env


async def start_playbook(playbook, inventory, *args, env=None):
    return await asyncio.create_subprocess_exec(
        str(BIN / "ansible-playbook"), str(ROOT / "playbooks" / playbook), "-i", str(inventory), *args,
        cwd=str(ROOT), env=play_env(env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True)


async def run_playbook(playbook, inventory, *args, env=None, timeout=180):
    proc = await start_playbook(playbook, inventory, *args, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return Play(proc.returncode, out.decode(), err.decode())
