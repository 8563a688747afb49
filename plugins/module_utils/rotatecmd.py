# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Device contract: the ``rotate`` command (contract.COMMANDS): a new
MQTT password and/or site CA for one device. Apart from contract.py so that
the device loads it only for a rotation (contract.py stays loaded through an
update, and an ESP32's heap is small). Runs unchanged on MicroPython and
imports nothing; the firmware image packs it like the contract.
"""


class RotateError(ValueError):
    pass


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


MAX_PASSWORD = 128
MAX_CA_PEM = 4096


def rotate_command(cmd_id, port, password=None, ca=None):
    """Stage a new MQTT secret on a device: ``{"id", "cmd": "rotate",
    "port"[, "password"][, "ca"]}``: its next password and/or the next site
    CA (PEM), and the broker's "next" listener port, where the device proves
    them by connecting. Answered on ``cmd/ack`` from that proving session
    (accepted), or from the old one (rejected, with the reason)."""
    cmd = {"id": cmd_id, "cmd": "rotate", "port": port}
    if password is not None:
        cmd["password"] = password
    if ca is not None:
        cmd["ca"] = ca
    check_rotate_command(cmd)
    return cmd


def check_rotate_command(cmd):
    """(port, password or None, ca PEM or None) of a rotate command, checked."""
    port, password, ca = cmd.get("port"), cmd.get("password"), cmd.get("ca")
    if not _is_int(port) or not 1 <= port <= 65535:
        raise RotateError("rotate port must be an integer 1..65535, got %r" % (port,))
    if password is None and ca is None:
        raise RotateError("rotate command without a password or a ca: nothing to rotate")
    if password is not None and (not isinstance(password, str) or not 1 <= len(password) <= MAX_PASSWORD
                                 or any(not " " < c < "\x7f" for c in password)):
        raise RotateError("rotate password must be 1-%d printable ASCII characters without spaces" % MAX_PASSWORD)
    if ca is not None and (not isinstance(ca, str) or len(ca) > MAX_CA_PEM
                           or not ca.startswith("-----BEGIN CERTIFICATE-----")):
        raise RotateError("rotate ca must be one PEM certificate of at most %d characters" % MAX_CA_PEM)
    return port, password, ca
