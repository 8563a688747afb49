"""The firmware's own MQTT 3.1.1 client: packet encoding against the
specification's examples, then real sessions with a real Mosquitto, and
interoperation with paho-mqtt (an independent implementation)."""

import asyncio
import time

import pytest

import mqtt
import mqttpkt
from mqttc import Client as PahoClient

USERS = {"dev-a": "pw-a", "dev-b": "pw-b", "watcher": "pw-w"}


# --- packets ---------------------------------------------------------------

@pytest.mark.parametrize("n,encoded", [
    # MQTT 3.1.1 section 2.2.3, table 2.4
    (0, "00"), (127, "7f"), (128, "8001"), (16383, "ff7f"), (16384, "808001"), (2097151, "ffff7f"),
    (2097152, "80808001"), (268435455, "ffffff7f"),
])
def test_remaining_length(n, encoded):
    assert mqttpkt.encode_length(n).hex() == encoded
    assert mqttpkt.decode_length(bytes.fromhex("30" + encoded)) == (n, 1 + len(encoded) // 2)


def test_remaining_length_limits():
    with pytest.raises(ValueError):
        mqttpkt.encode_length(268435456)
    assert mqttpkt.decode_length(b"\x30\x80") is None
    with pytest.raises(mqttpkt.ProtocolError):
        mqttpkt.decode_length(b"\x30\x80\x80\x80\x80\x01")


def test_connect_packet_bytes():
    # fixed header, "MQTT", level 4, clean session, keepalive 60, client id "abc"
    assert mqttpkt.connect("abc", 60).hex() == "100f00044d5154540402003c0003616263"
    with_all = mqttpkt.connect("d", 30, user="u", password="p", will=("t/s", b"{}", 1, True))
    assert with_all[9] == 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02  # user, password, will retain, QoS 1, will, clean


def test_publish_and_subscribe_bytes():
    assert mqttpkt.publish("a/b", b"hi", 0).hex() == "3007" + "0003612f62" + "6869"
    assert mqttpkt.publish("a/b", b"hi", 1, retain=True, packet_id=10).hex() == "3309" + "0003612f62" + "000a" + "6869"
    assert mqttpkt.subscribe(1, [("a/+", 1)]).hex() == "8208" + "0001" + "0003612f2b" + "01"
    with pytest.raises(ValueError):
        mqttpkt.publish("a/+", b"", 0)
    with pytest.raises(ValueError):
        mqttpkt.publish("a", b"", 1)
    with pytest.raises(ValueError):
        mqttpkt.publish("a", b"", 2, packet_id=1)
    # the header is built without the payload: a message is written as it is, never copied into a packet
    header = mqttpkt.publish_header("a/b", 2, 1, packet_id=10)
    assert header + b"hi" == mqttpkt.publish("a/b", b"hi", 1, packet_id=10)


def test_parse_incoming():
    assert mqttpkt.parse(0x20, b"\x01\x00") == ("connack", True, 0)
    assert mqttpkt.parse(0x33, bytes.fromhex("0003612f62000a6869")) == ("publish", "a/b", b"hi", 1, True, 10)
    assert mqttpkt.parse(0x90, b"\x00\x01\x80") == ("suback", 1, [0x80])
    with pytest.raises(mqttpkt.ProtocolError):
        mqttpkt.parse(0x35, b"\x00\x01a\x00\x01")


# --- real sessions -----------------------------------------------------------

def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def client(b, user, **kw):
    return mqtt.Client(user, "127.0.0.1", b.port, user=user, password=USERS[user], **kw)


def test_publish_subscribe_qos1_and_retained(broker):
    b = broker(users=USERS)

    async def scenario():
        got = asyncio.Queue()
        sub = client(b, "watcher", on_message=lambda t, p, r: got.put_nowait((t, p, r)))
        pub = client(b, "dev-a")
        await sub.connect()
        await pub.connect()
        assert await sub.subscribe("site/x/#", 1) == 1
        await pub.publish("site/x/state", b'{"n": 1}', qos=1)
        await pub.publish("site/x/status", '{"online": true}', qos=1, retain=True)
        first = await asyncio.wait_for(got.get(), 5)
        second = await asyncio.wait_for(got.get(), 5)
        late = client(b, "dev-b", on_message=lambda t, p, r: got.put_nowait((t, p, r)))
        await late.connect()
        await late.subscribe("site/x/status", 1)
        retained = await asyncio.wait_for(got.get(), 5)
        for c in (sub, pub, late):
            await c.disconnect()
        return first, second, retained

    first, second, retained = run(scenario())
    assert first == ("site/x/state", b'{"n": 1}', False)
    assert second == ("site/x/status", b'{"online": true}', False)
    assert retained == ("site/x/status", b'{"online": true}', True)


def test_will_is_sent_on_abort_but_not_on_clean_disconnect(broker):
    b = broker(users=USERS)

    async def scenario():
        got = asyncio.Queue()
        watcher = client(b, "watcher", on_message=lambda t, p, r: got.put_nowait((t, p)))
        await watcher.connect()
        await watcher.subscribe("dev/+/status", 1)
        clean = client(b, "dev-a", will=("dev/a/status", b'{"online": false}', 1, True))
        await clean.connect()
        await clean.disconnect()
        dropped = client(b, "dev-b", will=("dev/b/status", b'{"online": false}', 1, True))
        await dropped.connect()
        dropped.abort()
        # the broker handles both in order: a will from the clean disconnect
        # would arrive before dev-b's
        message = await asyncio.wait_for(got.get(), 5)
        await watcher.disconnect()
        return message

    assert run(scenario()) == ("dev/b/status", b'{"online": false}'), "a clean disconnect must not send the will"


def test_bad_credentials_are_refused(broker):
    b = broker(users=USERS)

    async def scenario():
        c = mqtt.Client("dev-a", "127.0.0.1", b.port, user="dev-a", password="wrong")
        with pytest.raises(mqtt.ConnectRefused) as err:
            await c.connect()
        return err.value.code

    assert run(scenario()) in (4, 5)


def test_keepalive_pings_and_detects_a_hung_broker(broker):
    b = broker(users=USERS)

    async def scenario():
        c = client(b, "dev-a", keepalive=2)
        await c.connect()
        await asyncio.sleep(3.5)  # longer than the keepalive: pings keep the session
        alive = c.connected
        b.pause()
        t0 = time.monotonic()
        reason = await asyncio.wait_for(c.wait_closed(), 10)
        b.resume()
        return alive, reason, time.monotonic() - t0

    alive, reason, took = run(scenario())
    assert alive
    assert "PINGRESP" in reason and took <= 4.5


def test_publish_fails_cleanly_when_not_connected(broker):
    b = broker(users=USERS)

    async def scenario():
        c = client(b, "dev-a")
        await c.connect()
        c.abort()
        with pytest.raises(mqtt.MqttError, match="not connected"):
            await c.publish("x/y", b"1", qos=1)

    run(scenario())


def test_interoperates_with_paho(broker):
    b = broker(users=USERS)
    with PahoClient(b.port, user="watcher", password=USERS["watcher"]) as paho:
        paho.connect_ok()
        paho.subscribe("interop/#", 1)

        async def device():
            got = asyncio.Queue()
            c = client(b, "dev-a", on_message=lambda t, p, r: got.put_nowait((t, p)))
            await c.connect()
            await c.subscribe("interop/cmd", 1)
            await c.publish("interop/state", b"from-firmware", qos=1)
            # paho publishes with QoS 1 to the firmware client
            await asyncio.get_running_loop().run_in_executor(None, paho.publish, "interop/cmd", b"from-paho", 1)
            message = await asyncio.wait_for(got.get(), 5)
            await c.disconnect()
            return message

        assert run(device()) == ("interop/cmd", b"from-paho")
        assert paho.expect("interop/state", b"from-firmware").qos == 1
