"""The simulated fleet: the unchanged firmware app (firmware/app) on a host
board layer, N devices in one asyncio process.

The app's modules import each other by bare name, as they do from the root
of the device's filesystem, so firmware/app and the device contract
(plugins/module_utils: identity, contract, devconfig) go on sys.path here;
nothing of the app is copied or re-implemented.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APP_DIR = os.path.join(ROOT, "firmware", "app")
CONTRACT_DIR = os.path.join(ROOT, "plugins", "module_utils")
for _path in (CONTRACT_DIR, APP_DIR):
    if _path not in sys.path:
        sys.path.insert(0, _path)
