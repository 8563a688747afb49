"""What the flash image build (firmware/image) and the simulated fleet
(firmware/sim) both need, in one place that imports neither of them. The
dependency runs one way: the simulator uses the image (it boots a board
from a flash dump and writes what the board wrote back into it), the image
never uses the simulator, and both use this module.

- Where the device's code lives: the app (``APP_DIR``) and the device
  contract (``CONTRACT_MODULES`` in ``CONTRACT_DIR``, plugins/module_utils:
  the files that run unchanged on MicroPython; the image packs exactly
  these, and the flash_station role copies them). ``device_path()`` puts
  both on ``sys.path``, as the root of a device's filesystem has them, so
  the app's modules import each other by bare name.
- The site's devices from an Ansible inventory (``inventory_devices``).
- The sensors each kind of device has (``KINDS``), and the flash-time config
  that says so (``kind_config``).

Everything here is plain CPython with nothing from outside the standard
library at import time: the fleet container runs the simulator with
Debian's python3 alone.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP_DIR = os.path.join(ROOT, "firmware", "app")
CONTRACT_DIR = os.path.join(ROOT, "plugins", "module_utils")
# the device contract: the plugins/module_utils files that the device runs
# (each one's docstring starts with "Device contract:"); every other file
# there is controller-only ("Controller only:"). docs/architecture.md, section 2.
CONTRACT_MODULES = ("contract", "devconfig", "identity", "rotatecmd")

# kind: (energy meters, i.e. phases; temperature zones; rated current per
# phase in A, for the simulated signals; setpoint in C or None)
KINDS = {
    "psu": (3, 0, 12.0, None),
    "oven": (3, 3, 18.0, 180.0),
    "mixer": (3, 0, 9.0, None),
    "fan": (1, 0, 3.5, None),
    "env": (0, 1, 0.0, None),
}
DEFAULT_KIND = (1, 0, 5.0, None)


def device_path():
    """Put the device contract and the app on sys.path (the app first), as
    the device's filesystem root has them; idempotent."""
    for path in (CONTRACT_DIR, APP_DIR):
        if path not in sys.path:
            sys.path.insert(0, path)


def sensor_rom(mac, zone):
    """The ROM code of the DS18B20 in *zone* of the board with *mac* (raw
    bytes) as the simulated boards report it."""
    device_path()
    import ds18b20  # firmware/app/ds18b20.py: the device's own CRC

    rom = bytes((0x28, 0xFF, zone, 0x1D, mac[4], mac[5], 0x04))
    return rom + bytes((ds18b20.crc8(rom),))


def kind_config(kind, mac=None):
    """The flash-time config of each kind (which sensors it has). With the
    board's *mac*, each DS18B20 is pinned to its zone by ROM code, as a
    commissioned device is."""
    device_path()
    import identity

    phases, zones, _rated, setpoint = KINDS.get(kind, DEFAULT_KIND)
    cfg = {"pzem_addresses": list(range(1, phases + 1)), "temperature_zones": zones}
    if mac is not None and zones:
        raw = identity.parse_mac(mac)
        cfg["temperature_sensors"] = {sensor_rom(raw, z).hex(): z for z in range(zones)}
    if setpoint is not None:
        cfg["setpoint_c"] = setpoint
    return cfg


def inventory_devices(inventory, generated_only=False):
    """[(device_id, kind, mac)] and the site vars from an Ansible inventory;
    *generated_only*: only the hosts the sim_fleet inventory plugin made
    (``device_simulated``), not the inventory's named devices."""
    device_path()
    import identity

    exe = os.path.join(os.path.dirname(sys.executable), "ansible-inventory")
    out = subprocess.run([exe if os.path.exists(exe) else "ansible-inventory", "-i", inventory, "--list"],
                         capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    hostvars = data["_meta"]["hostvars"]

    def hosts(group):
        found = list(data.get(group, {}).get("hosts", []))
        for child in data.get(group, {}).get("children", []):
            found += hosts(child)
        return found

    devices = []
    for name in sorted(set(hosts("fleet"))):
        if generated_only and hostvars[name].get("device_simulated") is not True:
            continue
        kind, _ = identity.split_device_id(name)
        mac = hostvars[name]["device_mac"]
        if isinstance(mac, dict):  # ansible-inventory marks values set by inventory plugins as unsafe
            mac = mac["__ansible_unsafe"]
        if identity.device_id(kind, mac) != name:
            raise ValueError("inventory host %s does not match its MAC %s (expected %s)"
                             % (name, mac, identity.device_id(kind, mac)))
        devices.append((name, kind, mac))
    controller = hosts("controller")
    site_vars = hostvars[controller[0]] if controller else {}
    return devices, site_vars
