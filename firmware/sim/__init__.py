"""The simulated fleet: the unchanged firmware app (firmware/app) on a host
board layer, N devices in one asyncio process.

The app's modules import each other by bare name, as they do from the root
of the device's filesystem, so firmware/app goes on sys.path here; nothing of
the app is copied or re-implemented.
"""

import os
import sys

APP_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "app")
if APP_DIR not in sys.path:
    sys.path.insert(0, APP_DIR)
