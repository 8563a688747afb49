"""The simulated fleet: the unchanged firmware app (firmware/app) on a host
board layer, N devices in one asyncio process.

The app's modules import each other by bare name, as they do from the root
of the device's filesystem, so firmware/app and the device contract
(plugins/module_utils: identity, contract, devconfig) go on sys.path here
(firmware.common.device_path); nothing of the app is copied or
re-implemented.
"""

from firmware import common

APP_DIR = common.APP_DIR
CONTRACT_DIR = common.CONTRACT_DIR
common.device_path()
