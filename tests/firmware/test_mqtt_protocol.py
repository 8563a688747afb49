"""The firmware's MQTT client against a scripted peer that breaks MQTT 3.1.1
in every way a broken or hostile broker can, under CPython and under
MicroPython's unix port (the interpreter of the devices).

Categories: refusal codes, truncated packets, oversized packets, wrong
packet types, wrong flags and reserved bits, a silent peer, a peer that
stops reading, invalid PUBLISH packets (which must never reach the app),
acknowledgements of the wrong type, a message whose handler fails (never
acknowledged), sessions that must not haunt the next one, and arguments
that must never reach the wire.

Each case runs tests/firmware/mpy/mqtt_driver.py in its own process; the
peer is tools/pylib/fakepeer.py in this process."""

import json
import pathlib
import subprocess
import threading
import time

import pytest

from fakepeer import FakePeer, connack, length, packet, puback, publish, suback
from interp import command

DRIVER = pathlib.Path(__file__).parent / "mpy" / "mqtt_driver.py"
FAST = {"timeout_s": 1, "keepalive": 0}


def drive(interp, compiled, peer, steps, client=None, timeout=30):
    argv, env = command(interp, DRIVER, compiled)
    env.update(EF_PORT=str(peer.port), EF_STEPS=json.dumps(steps), EF_CLIENT=json.dumps(client or FAST))
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    peer.ended = time.monotonic()
    peer.join()
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines and lines[-1] == {"step": "end"}, out.stdout + out.stderr
    peer.check()
    return [x for x in lines if "step" in x][:-1], [x for x in lines if "msg" in x]


def hold_open(conn, seconds=5):
    """Keep the connection until the client closes it (or *seconds* pass)."""
    conn.wait_eof(seconds)


# --- refusals and the CONNACK ----------------------------------------------------

@pytest.mark.parametrize("code,reason", [
    (1, "unacceptable protocol version"), (2, "identifier rejected"), (3, "server unavailable"),
    (4, "bad user name or password"), (5, "not authorized"),
])
def test_refusal_codes_raise_connect_refused(interp, compiled_device, code, reason):
    def refuse(conn):
        conn.accept_session(code)
        hold_open(conn)

    peer = FakePeer(refuse)
    steps, _ = drive(interp, compiled_device, peer, [["connect"], ["hold", 600]])
    assert not steps[0]["ok"]
    assert steps[0]["error"] == f"ConnectRefused: broker refused the connection: {reason} ({code})"
    assert not steps[0]["connected"]
    assert peer.closed_by_client(), "the refused connection was left open"


@pytest.mark.parametrize("reply,error", [
    (connack(0, flags=0x21), "CONNACK with reserved flags 0x1"),
    (packet(0x20, b"\x02\x00"), "CONNACK with reserved flags 0x02"),
    (packet(0x20, b"\x00\x09"), "CONNACK with unknown return code 9"),
    (packet(0x20, b"\x01\x05"), "CONNACK refusal (5) with session present"),
    (packet(0x20, b"\x00\x00\x00"), "CONNACK with remaining length 3 (must be 2)"),
    (puback(1), "expected CONNACK, got PUBACK"),
    (packet(0x82, b"\x00\x01\x00\x01a\x00"), "a server must not send packet type 0x82"),
    (b"\x20\xff\xff\xff\xff\x01", "malformed remaining length"),
])
def test_a_bad_connack_is_a_clean_error(interp, compiled_device, reply, error):
    def answer(conn):
        conn.recv_packet()
        conn.send(reply)
        hold_open(conn)

    peer = FakePeer(answer)
    steps, _ = drive(interp, compiled_device, peer, [["connect"], ["hold", 600]])
    assert not steps[0]["ok"] and steps[0]["error"].startswith("MqttError: no session with 127.0.0.1")
    assert error in steps[0]["error"], steps[0]["error"]
    assert peer.closed_by_client(), "the transport was left open"


@pytest.mark.parametrize("sent", [b"\x20\x02\x00", b"\x20\x80", b""])
def test_truncated_connack(interp, compiled_device, sent):
    def truncate(conn):
        conn.recv_packet()
        conn.send(sent)
        conn.sock.close()

    peer = FakePeer(truncate)
    steps, _ = drive(interp, compiled_device, peer, [["connect"]])
    assert not steps[0]["ok"] and "the peer closed the connection" in steps[0]["error"], steps[0]


def test_silent_peer_connect_times_out_and_closes(interp, compiled_device):
    peer = FakePeer(lambda conn: (conn.recv_packet(), hold_open(conn, 6)))
    steps, _ = drive(interp, compiled_device, peer, [["connect"], ["hold", 600]])
    assert not steps[0]["ok"] and "no CONNACK within 1s" in steps[0]["error"]
    assert 900 <= steps[0]["ms"] <= 3000, steps[0]
    assert peer.closed_by_client(), "the transport was left open"


# --- during the session ----------------------------------------------------------

def session_then(*replies, after_sub=True):
    """Accept, grant one subscription, then send *replies* and keep the connection."""
    def handler(conn):
        conn.accept_session()
        if after_sub:
            pkt = conn.recv_packet()
            assert pkt[0] == 8
            conn.send(suback(int.from_bytes(pkt[2][:2], "big"), 1))
        for r in replies:
            conn.send(r)
        conn.serve(5)
    return handler


SESSION = [["connect"], ["sub", "t/#", 1], ["wait_closed", 5000]]


@pytest.mark.parametrize("reply,error", [
    # wrong flags
    (packet(0x36, b"\x00\x03t/a\x00\x01x"), "PUBLISH with QoS 3"),
    (packet(0x38, b"\x00\x03t/ax"), "PUBLISH QoS 0 with the DUP flag set"),
    (packet(0x34, b"\x00\x03t/a\x00\x01x"), "QoS 2 PUBLISH"),
    (packet(0x92, b"\x00\x05\x01"), "SUBACK with reserved flags 0x2"),
    (packet(0x41, b"\x00\x05"), "PUBACK with reserved flags 0x1"),
    # wrong types
    (packet(0x10, b"\x00\x04MQTT"), "a server must not send packet type 0x10"),
    (packet(0xb0, b"\x00\x01"), "a server must not send packet type 0xb0"),
    (connack(), "unexpected CONNACK during the session"),
    # wrong lengths and values
    (packet(0x40, b"\x00\x05\x00"), "PUBACK with remaining length 3"),
    (packet(0xd0, b"\x00"), "PINGRESP with remaining length 1"),
    (packet(0x40, b"\x00\x00"), "packet id 0"),
    (packet(0x90, b"\x00\x07\x03"), "SUBACK with invalid return code 0x03"),
    # oversized: refused from the header, before anything is allocated
    (b"\x30" + length(200_000_000), "PUBLISH of 200000000 bytes exceeds the limit of 16384"),
    (b"\x30\xff\xff\xff\xff\x7f", "malformed remaining length"),
])
def test_a_bad_packet_ends_the_session_cleanly(interp, compiled_device, reply, error):
    peer = FakePeer(session_then(reply))
    steps, msgs = drive(interp, compiled_device, peer, SESSION + [["hold", 600]])
    assert steps[1]["ok"], steps
    reason = steps[2]["reason"]
    assert error in reason, reason
    assert not steps[2]["connected"] and not msgs
    assert peer.closed_by_client(), "the transport was left open"


@pytest.mark.parametrize("bad,error", [
    (publish(b""), "PUBLISH too short"),
    (publish(b"", b"payload"), "empty topic"),
    (publish(b"t/\x00a"), "contains U+0000"),
    (publish(b"t/+"), "PUBLISH topic with a wildcard"),
    (publish(b"t/#"), "PUBLISH topic with a wildcard"),
    (publish(b"t/\xff"), "invalid UTF-8 lead byte"),
    (publish(b"t/\xc0\xaf"), "invalid UTF-8 lead byte"),  # an overlong '/'
    (publish(b"t/\xed\xa0\x80"), "invalid UTF-8 continuation"),  # a UTF-16 surrogate
    (publish(b"t/\xe2\x82"), "truncated UTF-8 sequence"),
    (publish(b"t/a", b"x", topic_length=200), "overruns the packet"),
    (publish(b"t/a", b"x", qos=1, packet_id=0), "packet id 0"),
])
def test_invalid_publish_never_reaches_the_app(interp, compiled_device, bad, error):
    peer = FakePeer(session_then(publish(b"t/ok", b"fine"), bad, publish(b"t/after", b"late")))
    steps, msgs = drive(interp, compiled_device, peer, SESSION)
    assert [m["msg"] for m in msgs] == ["t/ok"], msgs
    assert error in steps[2]["reason"], steps[2]["reason"]


def test_truncated_publish_then_close(interp, compiled_device):
    def handler(conn):
        conn.accept_session()
        pkt = conn.recv_packet()
        conn.send(suback(int.from_bytes(pkt[2][:2], "big"), 1))
        conn.send(publish(b"t/a", b"x" * 50)[:20])
        conn.sock.close()

    peer = FakePeer(handler)
    steps, msgs = drive(interp, compiled_device, peer, SESSION)
    assert not msgs and "the peer closed the connection" in steps[2]["reason"]


def test_valid_publish_is_delivered_then_acknowledged(interp, compiled_device):
    acks = []

    def handler(conn):
        conn.accept_session()
        pkt = conn.recv_packet()
        conn.send(suback(int.from_bytes(pkt[2][:2], "big"), 1))
        conn.send(publish(b"t/\xc3\xa9t\xc3\xa9", b"v" * 3000, qos=1, packet_id=7))
        conn.send(publish(b"t/r", b"", first=0x31))  # retained, empty payload (a cleared retained message)
        pkt = conn.recv_packet()
        acks.append(pkt)
        conn.serve(5)

    peer = FakePeer(handler)
    steps, msgs = drive(interp, compiled_device, peer, [["connect"], ["sub", "t/#", 1], ["hold", 300],
                                                          ["disconnect"]])
    assert msgs == [{"msg": "t/été", "size": 3000, "retain": False}, {"msg": "t/r", "size": 0, "retain": True}]
    assert acks == [(4, 0, b"\x00\x07")]
    assert steps[3]["ok"] and steps[3]["lost"] == "disconnected"


def test_a_message_whose_handler_fails_is_not_acknowledged(interp, compiled_device):
    """PUBACK only after on_message returned: when it raises, the broker
    still owns the message (no PUBACK), and the session ends."""
    seen = []

    def handler(conn):
        conn.accept_session()
        pkt = conn.recv_packet()
        conn.send(suback(int.from_bytes(pkt[2][:2], "big"), 1))
        conn.send(publish(b"t/cmd", b"{}", qos=1, packet_id=9))
        seen.append(conn.recv_packet(3))

    peer = FakePeer(handler)
    steps, msgs = drive(interp, compiled_device, peer, [["raise_in_on_message"], ["connect"], ["sub", "t/#", 1],
                                                          ["wait_closed", 5000]])
    assert [m["msg"] for m in msgs] == ["t/cmd"]
    assert seen == [None], f"the failed message was acknowledged: {seen}"
    assert "on_message failed for t/cmd" in steps[3]["reason"]


@pytest.mark.parametrize("steps,wrong,error", [
    ([["connect"], ["pub", "t/a", 1, 10]], suback(1, 1), "no PUBACK for packet 1 within 1s"),
    ([["connect"], ["sub", "t/#", 1]], puback(1), "no SUBACK for packet 1 within 1s"),
])
def test_acks_are_matched_by_type_and_id(interp, compiled_device, steps, wrong, error):
    def handler(conn):
        conn.accept_session()
        conn.recv_packet()
        conn.send(wrong)  # the right id, the wrong type
        hold_open(conn)

    peer = FakePeer(handler)
    result, _ = drive(interp, compiled_device, peer, steps)
    assert not result[1]["ok"] and error in result[1]["error"], result[1]


@pytest.mark.parametrize("codes,error", [((0x01, 0x01), "returned [1, 1]"), ((0x02,), "returned [2]")])
def test_suback_must_answer_what_was_asked(interp, compiled_device, codes, error):
    def handler(conn):
        conn.accept_session()
        pkt = conn.recv_packet()
        conn.send(suback(int.from_bytes(pkt[2][:2], "big"), *codes))
        hold_open(conn)

    peer = FakePeer(handler)
    result, _ = drive(interp, compiled_device, peer, [["connect"], ["sub", "t/#", 1]])
    assert not result[1]["ok"] and error in result[1]["error"], result[1]


# --- silence, stalls, abort ------------------------------------------------------

def test_keepalive_detects_a_silent_peer(interp, compiled_device):
    def handler(conn):
        conn.accept_session()
        while conn.recv_packet(8) is not None:  # reads everything, answers nothing
            pass

    peer = FakePeer(handler)
    steps, _ = drive(interp, compiled_device, peer, [["connect"], ["wait_closed", 8000]],
                     client={"timeout_s": 1, "keepalive": 2})
    assert steps[1]["reason"] == "no PINGRESP within 1.0s"
    assert 1500 <= steps[1]["waited_ms"] <= 4000, steps[1]
    pings = [p for p in peer.conns[0].received if p[0] == 12]
    assert pings, "no PINGREQ was sent"


def stalled_peer(release):
    """Accepts, then never reads again until *release* is set."""
    def handler(conn):
        conn.accept_session()
        release.wait(20)
        conn.wait_eof(5)
    return handler


def test_a_peer_that_stops_reading_cannot_wedge_the_client(interp, compiled_device):
    release = threading.Event()
    peer = FakePeer(stalled_peer(release), rcvbuf=4096)
    threading.Timer(5, release.set).start()  # the peer reads again after 5 s: the EOF must be there
    steps, _ = drive(interp, compiled_device, peer, [["connect"], ["flood", 65536, 15000], ["hold", 6000]],
                     client={"timeout_s": 1, "keepalive": 4})
    flood = steps[1]
    assert flood["error"] and ("write stalled" in flood["error"] or "PINGRESP" in flood["error"]), flood
    assert flood["ms"] < 4000, flood
    assert not flood["connected"]
    assert peer.closed_by_client(before=1.0), "the TCP connection was left open"


def test_abort_drops_the_connection_at_once_even_when_the_peer_stops_reading(interp, compiled_device):
    release = threading.Event()
    peer = FakePeer(stalled_peer(release), rcvbuf=4096)
    threading.Timer(2, release.set).start()  # the peer reads again after 2 s: the EOF must be there
    steps, _ = drive(interp, compiled_device, peer,
                     [["connect"], ["flood_background", 65536, 20000], ["hold", 500], ["abort"], ["flood_result"],
                      ["hold", 4000]], client={"timeout_s": 30, "keepalive": 0})
    abort, flood = steps[3], steps[4]
    assert abort["ok"] and abort["abort_ms"] <= 50 and abort["lost"] == "aborted", abort
    assert flood["error"] and "aborted" in flood["error"] and flood["ms"] < 3000, flood
    assert peer.closed_by_client(before=1.0), "the TCP connection was not dropped"


def test_a_lost_session_does_not_haunt_the_next_one(interp, compiled_device):
    """Session 1 ends (the peer closes it); the same client connects again.
    Nothing of session 1 (its pinger above all) may touch session 2, which
    must live on with exactly one pinger."""
    def first(conn):
        conn.accept_session()
        conn.serve(0.6)
        conn.sock.close()

    def second(conn):
        conn.accept_session()
        conn.serve(6)

    peer = FakePeer(first, second)
    steps, _ = drive(interp, compiled_device, peer,
                     [["connect"], ["wait_closed", 5000], ["connect"], ["hold", 3500], ["disconnect"]],
                     client={"timeout_s": 1, "keepalive": 2})
    assert steps[1]["reason"] == "the peer closed the connection"
    assert steps[2]["ok"] and steps[3]["connected"], steps
    pings = [p for p in peer.conns[1].received if p[0] == 12]
    assert 2 <= len(pings) <= 5, f"{len(pings)} PINGREQs in 3.5 s with keepalive 2: more than one pinger?"


# --- what we send ----------------------------------------------------------------

@pytest.mark.parametrize("step,error", [
    (["client", {"client_id": ""}], "client id must not be empty"),
    (["client", {"client_id": "dev a"}], "contains a control character, space or wildcard"),
    (["client", {"client_id": "dev#1"}], "contains a control character, space or wildcard"),
    (["client", {"client_id": "dev\u0000"}], "contains U+0000"),
    (["client", {"client_id": "d", "keepalive": 70000}], "keepalive must be 0..65535"),
    (["client", {"client_id": "d", "will": ["a/+", "x", 1, True]}], "wildcards are not allowed"),
    (["client", {"client_id": "d", "password": "pw"}], "a password needs a user name"),
    (["pub", "", 1, 1], "topic must not be empty"),
    (["pub", "a/+", 1, 1], "wildcards are not allowed in a topic name"),
    (["pub", "a/#", 0, 1], "wildcards are not allowed in a topic name"),
    (["pub", "a\u0000b", 0, 1], "contains U+0000"),
    (["pub", "a", 2, 1], "QoS 2 not supported"),
    (["sub", "a/#/b", 1], "'#' must be the whole last level"),
    (["sub", "a/b#", 1], "'#' must be the whole last level"),
    (["sub", "a+/b", 1], "'+' must fill a whole level"),
    (["sub", "", 1], "topic filter must not be empty"),
    (["sub", "a/b", 3], "QoS 3 not supported"),
])
def test_invalid_arguments_never_reach_the_wire(interp, compiled_device, step, error):
    def handler(conn):
        conn.accept_session()
        conn.serve(5)

    peer = FakePeer(handler)
    steps, _ = drive(interp, compiled_device, peer, [["connect"], step, ["disconnect"]],
                     client=dict(FAST, client_id="dev-a"))
    assert steps[0]["ok"]
    assert not steps[1]["ok"] and steps[1]["error"].startswith("ValueError") and error in steps[1]["error"], steps[1]
    assert steps[2]["ok"] and steps[2]["lost"] == "disconnected"
    assert peer.conns[0].kinds() == [1, 14], "only CONNECT and DISCONNECT may have been sent"
