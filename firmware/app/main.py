"""Boot: choose the app slot (bootsel), then run the app from it.
main.py, bootsel.py and board_esp32.py live at the filesystem root and are
not replaced by an app bundle update."""

import sys

import bootsel
from board_esp32 import Esp32Board

board = Esp32Board()
state = bootsel.select(board.fs)
sys.path.insert(0, "/" + bootsel.slot_dir(state["active"]))

import asyncio  # noqa: E402

import device  # noqa: E402  (from the active slot)

asyncio.run(device.Device(board).run())
