"""The device's rare jobs, apart from what runs all the time: setting up an
MQTT session (subscriptions, announce, status) and the self-test that then
confirms a pending update; a ``cfg`` applied or rejected; a command
answered; a pending update abandoned when the self-test never ran.

A device spends nearly all its time between these, so ``device.py``
imports this module (and the contract and the config schema it uses) for
one job and releases them after it (``Device.control``).
"""

import json

import bootsel


async def connect(dev):
    """Open an MQTT session, subscribe, announce, publish status, self-test."""
    import mqtt

    board = dev.board
    broker = dev.settings["broker"]
    await board.wifi_connect()
    # the broker says so when the connection dies; a deliberate reset says why itself (offline())
    will = (dev.topic("status"), b'{"online": false, "reason": "connection_lost"}', 1, True)
    # a persistent session (client id = device id): QoS 1 commands sent while
    # the device is away are queued by the broker and delivered at the next connect
    rotating = dev.fs.exists("rotation.json")
    if rotating:  # the new secret first, then the older ones (rotate.py)
        import rotate

        client = await rotate.connect(dev, will)
        dev.release_modules("rotate")
    else:
        client = mqtt.Client(dev.id, broker["host"], broker.get("port", 1883), user=dev.id,
                             password=dev.settings["password"], keepalive=broker.get("keepalive", 60), will=will,
                             ssl=board.ssl_context(broker) if broker.get("tls") else None,
                             on_message=dev.on_message, timeout_s=broker.get("timeout_s", 10),
                             max_packet_size=broker.get("max_packet_size", mqtt.MAX_PACKET_SIZE), clean=False)
        dev.client = client
        await client.connect()
    dev.connects += 1
    # subscribe first: a retained status online=true then means that
    # this device takes cfg and cmd (the retained cfg arrives now)
    await client.subscribe(dev.topic("cmd"), 1)
    await client.subscribe(dev.topic("cfg"), 1)
    await dev.publish_json("announce", announce_payload(dev), retain=True)
    if dev.crash is not None:
        import supervisor

        supervisor.clear_crash(dev.fs)  # reported (and kept in this boot's announce)
    if rotating:  # settled before the status says online
        import rotate

        await rotate.connected(dev)
        dev.release_modules("rotate")
    await dev.publish_json("status", dev.status_payload(), retain=True)
    await self_test(dev)


def announce_payload(dev):
    board = dev.board
    ip = board.ip()
    out = {"id": dev.id, "kind": dev.kind, "mac": ":".join("%02x" % b for b in board.mac()),
           "chip": board.chip(), "fw": dev.fw, "ip": ip, "hostname": dev.id + ".local",
           "metrics": "http://%s:%d/metrics" % (ip, dev.config["metrics_port"]),
           "reset_cause": board.reset_cause(), "sensors": dev.sensors_seen}
    if dev.crash:
        out["crash"] = dev.crash
    if dev.problems:
        out["problems"] = dev.problems
    return out


async def self_test(dev):
    """Broker reachable (we are connected) and config valid: confirm a
    pending update, then report the outcome of the last update once."""
    import devconfig

    board = dev.board
    devconfig.validate(dict(dev.config, version=max(1, dev.config["version"])), dev.base_config)
    del devconfig
    dev.release_modules("devconfig")  # done with: gone before the contract comes in for the report
    last = dev.boot.get("last")
    if last and last.get("result") == "pending":
        if last.get("payload") == "firmware":
            if board.firmware_running() == last.get("target") and board.firmware_pending():
                board.firmware_mark_valid()
                last.update(result="confirmed", reported=False)
            elif board.firmware_running() != last.get("target"):
                last.update(result="rolled_back", reported=False,
                            detail="the bootloader returned to %s" % board.firmware_running())
            bootsel.save(dev.fs, dev.boot)
        else:
            dev.boot = bootsel.confirm(dev.fs)
            last = dev.boot["last"]
        if last and last.get("result") == "confirmed":
            import otasig

            otasig.confirmed(dev, last)  # anti-rollback: the device's security version rises
            dev.release_modules("otasig")
    dev.confirmed_event.set()
    # an outcome not reported yet: a confirmation, a rollback, or a failed
    # update whose report died with the session it was sent on (ota.run)
    if last and not last.get("reported") and last.get("result") in ("confirmed", "rolled_back", "failed"):
        import contract

        await dev.publish_json("ota", contract.ota_report(last.get("id"), last["result"], last.get("version"),
                                                           last.get("detail")))
        last["reported"] = True
        bootsel.save(dev.fs, dev.boot)


async def self_test_expired(dev):
    """The pending update did not reach the broker in time: abandon it."""
    detail = "self-test failed: broker not reachable within %ss" % dev.selftest_timeout_s
    dev.board.log(detail)
    last = dev.boot.get("last") or {}
    if last.get("payload") == "firmware":
        last.update(detail=detail)
        bootsel.save(dev.fs, dev.boot)  # not marked valid: the bootloader reverts
    else:
        bootsel.save(dev.fs, bootsel.rollback(dev.boot, detail))
    dev.board.reset()


async def cfg(dev, payload):
    """Apply a whole desired config (over defaults + flash-time config) and acknowledge it."""
    import devconfig

    try:
        candidate = json.loads(payload)
    except ValueError:
        await dev.publish_json("cfg/ack", devconfig.ack(None, "rejected", "config is not valid JSON"))
        return
    try:
        new = devconfig.validate(candidate, dev.base_config, dev.config["version"])
    except devconfig.ConfigError as e:
        await dev.publish_json("cfg/ack", devconfig.ack(devconfig.candidate_version(candidate), "rejected", str(e)))
        return
    if new != dev.config:
        bootsel.write_json(dev.fs, "config.json", candidate)  # atomic
        dev.config = new
        buf = dev.buffer
        buf.capacity = new["buffer_capacity"]
        while len(buf) > buf.capacity:  # a lower capacity holds at once, oldest dropped (and counted)
            buf.drop_oldest()
    await dev.publish_json("cfg/ack", devconfig.ack(new["version"], "applied"))
    await dev.publish_json("status", dev.status_payload(), retain=True)


async def message(dev, topic, payload):
    """One message of the inbox: a cfg, a command, or (topic None) the id
    of a command refused because the inbox was full (Device.on_message)."""
    if topic is None:
        import contract

        await dev.publish_json("cmd/ack", contract.cmd_ack(
            payload, None, "rejected", "inbox full: not done; send it again", "inbox_full"))
        return None
    if topic == dev.topic("cfg"):
        return await cfg(dev, payload)
    return await cmd(dev, payload)


async def offline(dev, reason):
    """Before a deliberate reset: the retained status says offline, and why
    (a clean DISCONNECT discards the will), then the session ends."""
    status = dev.status_payload(False)
    status["reason"] = reason
    await dev.publish_json("status", status, retain=True)
    await dev.client.disconnect()


async def cmd(dev, payload):
    """Every command gets an answer: the others (and anything malformed
    or refused before it runs) on cmd/ack, here; an ``ota`` on the ota
    channel, by ota.run: it is returned, so that the device runs it
    without this module loaded. A command with ``expires`` runs only on a
    set clock before then (waiting up to CLOCK_WAIT_S for the clock)."""
    import contract

    try:
        command = json.loads(payload)
    except ValueError:
        await dev.publish_json("cmd/ack", contract.cmd_ack(None, None, "rejected", "command is not valid JSON"))
        return None
    try:
        cmd_id, name = contract.check_command(command)
    except contract.ContractError as e:
        await dev.publish_json("cmd/ack", contract.cmd_ack(
            contract.command_id_of(command), command.get("cmd") if isinstance(command, dict) else None, "rejected",
            str(e)))
        return None
    board = dev.board
    expires = command.get("expires")
    if expires is not None:
        for _ in range(contract.CLOCK_WAIT_S):
            if board.time_synced():
                break
            await board.sleep(1)
        # a board whose time() runs fast (the simulator's time_scale) gives its real-speed clock
        now, refused = getattr(board, "wall_time", board.time)(), None
        if not board.time_synced():
            refused = "clock_unset", "the command expires at %d but this device's clock is not set" % expires
        elif now >= expires:
            refused = "expired", "the command expired at %d, %d s before it was handled" % (expires, now - expires)
        if refused:
            await dev.publish_json("cmd/ack", contract.cmd_ack(cmd_id, name, "rejected", refused[1], refused[0]))
            return None
    if name == "ota":
        return command
    if name == "signing_key":
        import otasig

        refused = otasig.hand_over(dev, command)
        dev.release_modules("otasig")
        await dev.publish_json("cmd/ack", contract.cmd_ack(cmd_id, name, "rejected" if refused else "accepted",
                                                           refused))
        return None
    if name == "rotate":
        import rotate

        refused = await rotate.stage(dev, cmd_id, command)  # answers itself, from the proving session
        dev.release_modules("rotate")
        if refused:
            await dev.publish_json("cmd/ack", contract.cmd_ack(cmd_id, name, "rejected", refused))
        return None
    # reboot
    try:
        await dev.publish_json("cmd/ack", contract.cmd_ack(cmd_id, name, "accepted"))
        await offline(dev, "rebooting")
    finally:
        dev.board.reset()
