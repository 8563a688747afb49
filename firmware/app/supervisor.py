"""What runs a board: choose the app slot, run the app, and whatever
happens, never leave a board at the REPL.

``main.py`` calls ``run(make_board)``. Anything the app raises (or the app
returning at all) is recorded in a small crash file and the board resets.
The next boot reports the crash on ``announce``. A freshly updated slot that
crashes before its self-test confirmed it boots a second time unconfirmed,
and ``bootsel.select`` then abandons it for the previous slot, naming the
crash as the reason.

This module sits at the filesystem root next to main.py (not in an app
slot, so an update can never break it). The simulator uses the same
functions around its own reset loop.
"""

import sys

import bootsel

CRASH_FILE = "crash.json"
MAX_ERROR = 200


def describe(exc):
    text = str(exc)
    name = type(exc).__name__
    return (name + ": " + text if text else name)[:MAX_ERROR]


def load_crash(fs):
    """The recorded crash, or None."""
    if not fs.exists(CRASH_FILE):
        return None
    try:
        with fs.open(CRASH_FILE, "r") as f:
            import json

            crash = json.loads(f.read())
        return crash if isinstance(crash, dict) else None
    except (OSError, ValueError):
        return None


def record_crash(fs, error, slot=None, uptime_s=None):
    """Remember a crash for the next boot (replaces the file atomically)."""
    previous = load_crash(fs) or {}
    bootsel.write_json(fs, CRASH_FILE, {"error": str(error)[:MAX_ERROR], "count": previous.get("count", 0) + 1,
                                        "slot": slot, "uptime_s": uptime_s})


def clear_crash(fs):
    if fs.exists(CRASH_FILE):
        fs.remove(CRASH_FILE)


def boot(fs):
    """Once per boot, before the app is imported: the slot state."""
    crash = load_crash(fs)
    return bootsel.select(fs, crash.get("error") if crash else None)


def _print_exception(exc):
    printer = getattr(sys, "print_exception", None)  # MicroPython
    if printer is not None:
        printer(exc)
    else:
        import traceback

        traceback.print_exception(exc)


def run(make_board, reset_delay_s=3):
    """Boot and run the app; never returns on a board (it resets)."""
    import time

    board = slot = None
    try:
        board = make_board()
        slot = boot(board.fs)["active"]
        sys.path.insert(0, board.fs.path(bootsel.slot_dir(slot)))
        import asyncio

        import device  # from the active slot

        asyncio.run(device.Device(board).run())
        error = "the app returned"
    except KeyboardInterrupt:  # Ctrl-C on the serial console: stay at the REPL to debug
        raise
    except Exception as e:  # MemoryError and OSError included
        error = describe(e)
        try:
            _print_exception(e)
        except Exception:
            pass
    try:
        print("crash: %s; resetting in %ds" % (error, reset_delay_s))
        if board is not None:
            record_crash(board.fs, error, slot, board.uptime_s())
    except Exception:
        pass
    time.sleep(reset_delay_s)  # no hot boot loop when every boot fails
    if board is not None:
        board.reset()
    import machine

    machine.reset()
