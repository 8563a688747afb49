"""Boot slot selection for app bundles (A/B directories on the filesystem).

This module sits at the root of the device's filesystem next to main.py and
is not part of a slot, so an update can never break it. State lives in
``boot.json`` and is replaced atomically (write, then rename), so a power cut
at any moment leaves either the old or the new state:

  {"active": "a", "previous": null, "pending": false, "attempts": 0, "last": {...}}

A slot staged by an update boots *pending*. The app confirms it after its
self-test. A pending slot that boots a second time without having been
confirmed (it crashed, hung, or lost power before its self-test passed) is
abandoned and the previous slot boots instead.

Files are replaced with ``fs.rename``, which replaces the target atomically
on littlefs and POSIX alike (the board layers must not delete first).
"""

import json

BOOT_FILE = "boot.json"
SLOTS = ("a", "b")


def default_state():
    return {"active": "a", "previous": None, "pending": False, "attempts": 0, "last": None}


def slot_dir(slot):
    return "app_" + slot


def other(slot):
    return "b" if slot == "a" else "a"


def load(fs):
    if not fs.exists(BOOT_FILE):
        return default_state()
    try:
        with fs.open(BOOT_FILE, "r") as f:
            state = json.loads(f.read())
        if state.get("active") not in SLOTS:
            return default_state()
        return state
    except (OSError, ValueError):
        return default_state()


def write_json(fs, path, value):
    """Replace *path* so that a reset leaves either the old or the new file."""
    tmp = path + ".new"
    with fs.open(tmp, "w") as f:
        f.write(json.dumps(value))
    fs.rename(tmp, path)


def save(fs, state):
    write_json(fs, BOOT_FILE, state)


def rollback(state, detail):
    last = dict(state.get("last") or {})
    last["result"] = "rolled_back"
    last["detail"] = detail
    last["reported"] = False
    state.update(active=state["previous"] or other(state["active"]), previous=None, pending=False, attempts=0,
                 last=last)
    return state


def select(fs, crash=None):
    """Called once per boot, before the app is imported: returns the state.
    *crash* is the last recorded crash, if any: the reason a pending slot
    was not confirmed."""
    state = load(fs)
    if state["pending"]:
        if state["attempts"] >= 1:
            detail = "slot %s was not confirmed after boot" % state["active"]
            if crash:
                detail += "; it crashed: %s" % crash
            rollback(state, detail)
        else:
            state["attempts"] += 1
        save(fs, state)
    return state


def stage(fs, slot, record):
    """Boot *slot* next, pending confirmation. *record* describes the update."""
    state = load(fs)
    record = dict(record, result="pending", reported=False)
    state.update(previous=state["active"], active=slot, pending=True, attempts=0, last=record)
    save(fs, state)
    return state


def confirm(fs):
    state = load(fs)
    if state["pending"]:
        state["pending"] = False
        state["attempts"] = 0
        state["previous"] = None
        if state.get("last"):
            state["last"].update(result="confirmed", reported=False)
        save(fs, state)
    return state
