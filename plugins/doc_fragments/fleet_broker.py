# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
# -*- coding: utf-8 -*-
"""The site broker connection shared by the fleet action plugins."""


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  site:
    description:
      - The site, the second level of every device topic (C(site/<site>/<kind>/<id>/<channel>)).
      - Default C(edgefleet_site) of the inventory.
    type: str
  broker_host:
    description:
      - The site broker, as the Ansible controller reaches it. Default C(edgefleet_broker_host), else
        C(edgefleet_controller_address).
    type: str
  broker_port:
    description:
      - Default C(edgefleet_broker_tls_port) with I(tls), else C(edgefleet_broker_port).
    type: int
  tls:
    description:
      - Connect with TLS, verifying the broker's certificate (host name included) against I(ca_file).
      - Default C(edgefleet_fleet_tls) of the inventory, else true.
    type: bool
  ca_file:
    description:
      - The site CA. Default C(<edgefleet_secrets_dir>/ca/ca.crt), where the site_ca role keeps it.
    type: path
  username:
    description:
      - The MQTT service user. The mosquitto role's C(controller) user may write C(cfg) and C(cmd) and read
        what devices answer, and has readwrite on C(site/<site>/_controller/#), which the plugins use to
        learn when a subscription's retained messages have all arrived.
    type: str
    default: controller
  password:
    description:
      - Its password. Default C(mosquitto_passwords[username]) (vault), else the file
        C(<edgefleet_secrets_dir>/mqtt/<username>) that the mosquitto role generated.
    type: str
  connect_timeout:
    description: Seconds to wait for the broker to accept the session and deliver its retained messages.
    type: float
    default: 10.0
requirements:
  - paho-mqtt 2.x on the Ansible controller (requirements.txt)
"""
