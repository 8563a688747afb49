"""What follows an update's install (ota.run), imported only then and
released with ota: the failure reported, or kept in the boot record when
its session is gone; or the commit's last words before the reset."""

import bootsel


async def failed(device, cmd, shape, detail, report):
    """Report ``failed``. When that cannot be sent (the session died, which
    may be what cut the download), the boot record keeps the outcome
    unreported and control.self_test reports it after the next connect."""
    try:
        await report("failed", detail)
        return
    except Exception as e:
        device.board.log("ota: could not report the failure: %r" % (e,))
    fs = device.fs
    state = bootsel.load(fs)
    if (state.get("last") or {}).get("result") == "pending":  # an update still to confirm comes first
        return
    state["last"] = {"id": shape["id"], "version": shape["version"], "payload": cmd.get("payload"),
                     "result": "failed", "detail": detail, "reported": False}
    bootsel.save(fs, state)
    device.boot = state


async def committed(device, report):
    """The update is committed: say so, leave a retained status that says
    offline and why (a clean DISCONNECT discards the will, and the new
    image may never come back), and reset, whether or not that was sent."""
    try:
        await report("rebooting")
        status = device.status_payload(False)
        status["reason"] = "updating"
        await device.publish_json("status", status, retain=True)
        await device.client.disconnect()
    except Exception as e:
        device.board.log("ota: committed, but the report failed (%r); resetting anyway" % (e,))
    finally:
        device.board.reset()
