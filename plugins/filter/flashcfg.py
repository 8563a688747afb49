# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Filter for flash-time config (``device_flash_config``,
``flash_default_config[<kind>]``); the rules are the device's own,
plugins/module_utils/devconfig.py.

flash_config_problem
    An empty string when the device would accept the config at boot,
    otherwise the reason, naming the setting and the value (the message
    of the play's check).
"""

from ansible_collections.edgefleet.site.plugins.module_utils import devconfig


def flash_config_problem(config):
    if config is None:
        return ""
    try:
        devconfig.initial(dict(config) if hasattr(config, "items") else config)
    except devconfig.ConfigError as e:
        return str(e)
    return ""


class FilterModule:
    def filters(self):
        return {"flash_config_problem": flash_config_problem}
