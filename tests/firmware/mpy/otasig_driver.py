"""Run otasig's checks step by step on this interpreter (CPython or
MicroPython): reads a JSON list of steps from the file named in the
environment variable EF_STEPS, prints one JSON result per step. The
device is a plain object with a filesystem (boardkit.Fs on a directory)
and its device.json settings; signing.json persists between steps."""

import json
import os

import boardkit
import otasig


class Device:
    def __init__(self, root, settings):
        self.fs = boardkit.Fs(root)
        self.settings = settings


def main():
    with open(os.getenv("EF_STEPS")) as f:
        job = json.loads(f.read())
    device = Device(job["root"], job["settings"])
    for step in job["steps"]:
        op = step["op"]
        try:
            if op == "check":
                out = ["ok", otasig.check_update(device, step["cmd"])]
            elif op == "hand_over":
                refused = otasig.hand_over(device, step["cmd"])
                out = ["refused", refused] if refused else ["ok", otasig.current_key(device)]
            elif op == "confirmed":
                otasig.confirmed(device, step["last"])
                out = ["ok", otasig.security_version(device)]
            else:
                out = ["error", "unknown step %s" % op]
        except otasig.SignatureError as e:
            out = ["refused", str(e)]
        print(json.dumps(out))


main()
