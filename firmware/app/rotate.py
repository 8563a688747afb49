"""Rotating the device's MQTT secrets (its password, the site CA) over the
air, without ever locking the board out.

A ``rotate`` command (rotatecmd.check_rotate_command) brings the next
password and/or the next CA and the port of the broker's "next" listener,
which already knows them. The device keeps them beside the ones it uses,
ends its session and proves them: one connection to the next listener with
the new password (verifying the broker with the new CA). Accepted is
answered on that proving session, so the controller's ack is the proof;
then the device goes back to the main listener. A refusal (or anything else
that fails) drops the new secret and the device answers rejected, with the
reason, once it is back on the main listener with the old one. Only one
session at a time: an ESP32 has room for one TLS session.

``rotation.json`` (the board's own file: a re-flash keeps it) holds::

  {"cur": {"password", "ca"}, "next": {"password", "ca"}, "answer": {cmd/ack}}

``cur`` is the set the device last connected to the main listener with
(absent: device.json's); ``next`` a set proven on the next listener and not
yet used on the main one; ``answer`` a rejection still to be sent. A new CA
waits in ``ca.r1.crt`` or ``ca.r2.crt``. A connect tries ``next``, then
``cur``, then device.json's (so the device trusts both CAs meanwhile), and
the first that the main listener accepts is kept: once ``next`` works
there, the controller has retired the old secret. The new CA then replaces
the flash-time ``ca.crt``: the old CA is gone from the device. Imported for the job (a command, a connect when the file exists) and
released after it.
"""

import json

import bootsel

FILE = "rotation.json"
CA_FILES = ("ca.r1.crt", "ca.r2.crt")  # a new CA goes into the one the current set does not use


def load(dev):
    try:
        with dev.fs.open(FILE, "r") as f:
            state = json.loads(f.read())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _flash_set(dev):
    return {"password": dev.settings["password"], "ca": dev.settings["broker"].get("ca", "ca.crt")}


def credentials(dev):
    """The sets to try on the main listener, in order: [{"password", "ca"}]."""
    state = load(dev)
    out = []
    for s in (state.get("next"), state.get("cur"), _flash_set(dev)):
        if isinstance(s, dict) and s not in out:
            out.append(s)
    return out


async def connect(dev, will):
    """Connect to the main listener with the first set it accepts (a
    refusal, "not authorised" or a TLS failure, moves on to the next set)."""
    import mqtt

    broker = dev.settings["broker"]
    sets = credentials(dev)
    for i, creds in enumerate(sets):
        client = mqtt.Client(dev.id, broker["host"], broker.get("port", 1883), user=dev.id,
                             password=creds["password"], keepalive=broker.get("keepalive", 60), will=will,
                             ssl=dev.board.ssl_context(dict(broker, ca=creds["ca"])) if broker.get("tls") else None,
                             on_message=dev.on_message, timeout_s=broker.get("timeout_s", 10),
                             max_packet_size=broker.get("max_packet_size", mqtt.MAX_PACKET_SIZE), clean=False)
        dev.client = client
        try:
            await client.connect()
            dev.creds = creds
            return client
        except Exception:
            if i + 1 == len(sets):
                raise
            client.abort()


async def connected(dev):
    """After a connect to the main listener with the set dev.creds: keep it
    (the old one goes once the next one works there), and send a pending
    answer."""
    used = dev.creds
    state = load(dev)
    changed = False
    if used == state.get("next"):
        del state["next"]
        flash_ca = _flash_set(dev)["ca"]
        if used["ca"] != flash_ca:
            # the main listener's certificate is the new CA's: the old CA goes, and the new one takes the
            # flash-time file (which the next flash writes with the site's CA, this one by then)
            with dev.fs.open(used["ca"], "r") as f:
                pem = f.read()
            bootsel.write_json(dev.fs, FILE, dict(state, cur=used))  # a reset in between keeps a working set
            with dev.fs.open(flash_ca + ".new", "w") as f:
                f.write(pem)
            dev.fs.rename(flash_ca + ".new", flash_ca)
            dev.fs.remove(used["ca"])
            used = {"password": used["password"], "ca": flash_ca}
        state["cur"] = used
        changed = True
    answer = state.pop("answer", None)
    if answer is not None:
        await dev.publish_json("cmd/ack", answer)
        changed = True
    if changed and state:
        bootsel.write_json(dev.fs, FILE, state)
    elif changed:
        dev.fs.remove(FILE)  # nothing left (a rejection answered): connects are plain again


async def stage(dev, cmd_id, cmd):
    """Store the command's secret, prove it on the next listener and answer
    there; on failure keep the old one and leave the rejection for the next
    connect. Returns the reason when the command is refused as it came (the
    caller answers on the session that is still up), else None."""
    import contract
    import mqtt
    import rotatecmd

    try:
        port, password, ca = rotatecmd.check_rotate_command(cmd)
    except rotatecmd.RotateError as e:
        return str(e)
    finally:
        rotatecmd = None
        dev.release_modules("rotatecmd")
    broker = dev.settings["broker"]
    if ca is not None and not broker.get("tls"):
        return "this device does not use TLS: it has no CA to rotate"
    state = load(dev)
    cur = getattr(dev, "creds", None) or _flash_set(dev)
    new = {"password": password or cur["password"], "ca": cur["ca"]}
    if ca is not None:
        new["ca"] = CA_FILES[1] if cur["ca"] == CA_FILES[0] else CA_FILES[0]
        with dev.fs.open(new["ca"], "w") as f:
            f.write(ca)
    await dev.client.disconnect()  # one session at a time: the main one ends (cleanly: no will)
    # its own client id and a clean session: the device's persistent session
    # (subscriptions, queued commands) waits for it on the main listener
    proof = mqtt.Client(dev.id + ".proof", broker["host"], port, user=dev.id, password=new["password"],
                        keepalive=broker.get("keepalive", 60),
                        ssl=dev.board.ssl_context(dict(broker, ca=new["ca"])) if broker.get("tls") else None,
                        on_message=lambda *a: None, timeout_s=broker.get("timeout_s", 10))
    try:
        await proof.connect()
        await proof.publish(dev.topic("cmd/ack"), json.dumps(contract.cmd_ack(
            cmd_id, "rotate", "accepted", "proven on port %d" % port)).encode(), qos=1)
        await proof.disconnect()
        state["cur"], state["next"] = cur, new
        state.pop("answer", None)
    except Exception as e:
        proof.abort()
        if new["ca"] != cur["ca"] and dev.fs.exists(new["ca"]):
            dev.fs.remove(new["ca"])
        state["answer"] = contract.cmd_ack(cmd_id, "rotate", "rejected",
                                           "the new secret did not work on port %d: %s" % (port, e))
    bootsel.write_json(dev.fs, FILE, state)
    return None
