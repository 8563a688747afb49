# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Filters for the site controller's device-facing address
(``edgefleet_controller_address``); the logic is in
plugins/module_utils/siteaddr.py.

controller_address_problem
    An empty string when the value is a DNS name or an IP address a device can dial,
    otherwise the reason (for an assert's message).

names_cover_address
    ``names | names_cover_address(address)``: whether a list of certificate
    names (DNS names, IP addresses) covers the address.
"""

from ansible_collections.edgefleet.site.plugins.module_utils import siteaddr


def controller_address_problem(value):
    return siteaddr.address_problem(value) or ""


def names_cover_address(names, address):
    return siteaddr.covers(list(names or []), address)


class FilterModule:
    def filters(self):
        return {
            "controller_address_problem": controller_address_problem,
            "names_cover_address": names_cover_address,
        }
