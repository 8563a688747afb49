"""fleetcfg: desired config from inventory, versions, what is sent, outcomes;
fleetmqtt.broker_settings: where the broker connection comes from."""

import json

import pytest

import fleetcfg
import fleetmqtt

NOW = fleetcfg.VERSION_EPOCH + 1000000  # a fixed clock: versions from it are 1000000


def status(version, online=True):
    return json.dumps({"online": online, "fw": "1.0.0", "cfg_version": version}).encode()


def cfg(version, **settings):
    return json.dumps(dict(settings, version=version)).encode()


def test_desired_config_merges_fleet_kind_and_host_in_that_order():
    values = {("psu-ktcyat68", "device_config_fleet"): {"publish_interval_s": 10, "setpoint_c": 50},
              ("psu-ktcyat68", "device_config_kind"): {"setpoint_c": 60},
              ("psu-ktcyat68", "device_config"): {"setpoint_c": 70}}
    desired, errors = fleetcfg.collect_desired(["psu-ktcyat68"], lambda d, v: values.get((d, v)))
    assert errors == []
    assert desired == {"psu-ktcyat68": {"publish_interval_s": 10, "setpoint_c": 70}}


def test_bad_desired_configs_are_all_reported_with_host_variable_and_value():
    values = {("psu-ktcyat68", "device_config"): {"publish_intervall_s": 1},
              ("oven-tvcft64q", "device_config_kind"): {"setpoint_c": 999},
              ("env-yy1ka51y", "device_config"): ["not", "a", "mapping"],
              ("fan-edez6pps", "device_config"): {"sample_interval_s": 9, "publish_interval_s": 5}}
    devices = ["psu-ktcyat68", "oven-tvcft64q", "env-yy1ka51y", "fan-edez6pps", "controller"]
    desired, errors = fleetcfg.collect_desired(devices, lambda d, v: values.get((d, v)))
    text = "\n".join(errors)
    assert "psu-ktcyat68: unknown setting(s): publish_intervall_s" in text and "(from device_config)" in text
    assert "oven-tvcft64q: setpoint_c must be between -40 and 400, got 999 (from device_config_kind)" in text
    assert "env-yy1ka51y: device_config must be a mapping of settings, got list" in text
    assert "fan-edez6pps: sample_interval_s (9) must not exceed publish_interval_s (5)" in text
    assert "controller: not a device id" in text
    assert desired == {}


def test_versions_rise_above_what_the_broker_and_the_device_have_seen():
    assert fleetcfg.new_version(None, None, NOW) == 1000000
    assert fleetcfg.new_version(2000000, None, NOW) == 2000001  # a later clock elsewhere: still higher
    assert fleetcfg.new_version(5, 3000000, NOW) == 3000001  # the device applied more than the broker keeps


def test_unchanged_settings_applied_by_the_device_are_not_sent():
    p = fleetcfg.Plan("psu-ktcyat68", {"setpoint_c": 70}, cfg(42, setpoint_c=70), status(42), NOW)
    assert p.action is None and p.version == 42 and not p.would_change
    assert fleetcfg.Outcome(p).result == "unchanged"


def test_changed_settings_get_a_new_version():
    p = fleetcfg.Plan("psu-ktcyat68", {"setpoint_c": 71}, cfg(42, setpoint_c=70), status(42), NOW)
    assert p.action == "send" and p.version == 1000000 and p.would_change
    assert json.loads(p.message()) == {"setpoint_c": 71, "version": 1000000}
    assert p.diff()["before"] == '{\n  "setpoint_c": 70\n}\n'


def test_a_device_that_missed_the_retained_version_gets_it_again_unchanged():
    p = fleetcfg.Plan("psu-ktcyat68", {"setpoint_c": 70}, cfg(42, setpoint_c=70), status(41), NOW)
    assert p.action == "resend" and p.version == 42
    offline = fleetcfg.Plan("psu-ktcyat68", {"setpoint_c": 70}, cfg(42, setpoint_c=70), status(41, False), NOW)
    assert offline.action is None and fleetcfg.Outcome(offline).result == "offline"


def test_a_device_ahead_of_the_broker_gets_a_higher_version():
    """The broker lost its retained cfg (or another controller's): the
    device's reported version is the floor, so it never refuses ours as older."""
    p = fleetcfg.Plan("psu-ktcyat68", {"setpoint_c": 70}, cfg(42, setpoint_c=70), status(5000000), NOW)
    assert p.action == "send" and p.version == 5000001


def test_nothing_desired_and_nothing_sent_is_unchanged():
    p = fleetcfg.Plan("psu-ktcyat68", {}, None, status(0), NOW)
    assert p.action is None and fleetcfg.Outcome(p).result == "unchanged"


def test_outcomes_from_acks_and_statuses():
    p = fleetcfg.Plan("psu-ktcyat68", {"setpoint_c": 71}, cfg(42, setpoint_c=70), status(42), NOW)
    o = fleetcfg.Outcome(p)
    assert o.pending
    assert not o.on_ack({"version": 42, "result": "applied"})  # an older version's ack
    assert o.on_ack({"version": p.version, "result": "applied", "detail": None})
    assert o.result == "applied" and o.changed
    r = fleetcfg.Outcome(p)
    assert r.on_ack({"version": p.version, "result": "rejected", "detail": "setpoint_c too high"})
    assert r.result == "rejected" and r.detail == "setpoint_c too high" and not r.changed
    t = fleetcfg.Outcome(p)
    t.timed_out(30)
    assert t.result == "timed_out" and "within 30s" in t.detail
    g = fleetcfg.Outcome(p)
    assert g.on_status({"online": False}) and g.result == "offline"


def test_resending_the_same_settings_is_not_a_change():
    p = fleetcfg.Plan("psu-ktcyat68", {"setpoint_c": 70}, cfg(42, setpoint_c=70), status(40), NOW)
    o = fleetcfg.Outcome(p)
    o.on_ack({"version": 42, "result": "applied"})
    assert o.result == "applied" and o.changed  # the device did not report those settings before


@pytest.mark.parametrize("value,total,expected", [(0, 100, 0), (3, 100, 3), ("2", 10, 2), ("5%", 1000, 50),
                                                  ("0.5%", 1000, 5), ("100%", 7, 7)])
def test_tolerance(value, total, expected):
    assert fleetcfg.tolerance(value, total) == expected


@pytest.mark.parametrize("value", [-1, "-2", "150%", "many", True])
def test_bad_tolerance_names_the_value(value):
    with pytest.raises(fleetcfg.FleetConfigError, match="max_failures"):
        fleetcfg.tolerance(value, 10)


def test_broker_settings_come_from_the_inventory_and_the_secrets_dir(tmp_path):
    (tmp_path / "mqtt").mkdir()
    (tmp_path / "mqtt" / "controller").write_text("s3cret\n")
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    task_vars = {"edgefleet_site": "plant1", "edgefleet_broker_host": "ctl.plant1", "edgefleet_broker_tls_port": 8883,
                 "edgefleet_secrets_dir": str(tmp_path)}
    s = fleetmqtt.broker_settings({}, task_vars)
    assert s == {"host": "ctl.plant1", "port": 8883, "tls": True, "ca_file": str(tmp_path / "ca" / "ca.crt"),
                 "username": "controller", "password": "s3cret", "site": "plant1"}
    vaulted = fleetmqtt.broker_settings({"tls": False}, dict(task_vars, edgefleet_broker_port=1883,
                                                             mosquitto_passwords={"controller": "from-vault"}))
    assert vaulted["password"] == "from-vault" and vaulted["port"] == 1883 and vaulted["ca_file"] is None
    # without edgefleet_broker_host, the Ansible controller dials what devices dial
    task_vars.pop("edgefleet_broker_host")
    s = fleetmqtt.broker_settings({}, dict(task_vars, edgefleet_controller_address="ctl01.plant1.lan"))
    assert s["host"] == "ctl01.plant1.lan"
    s = fleetmqtt.broker_settings({}, dict(task_vars, edgefleet_controller_address="ctl01.plant1.lan",
                                            edgefleet_broker_host="127.0.0.1"))
    assert s["host"] == "127.0.0.1"


@pytest.mark.parametrize("args,task_vars,message", [
    ({}, {"edgefleet_broker_host": "h"}, "no site"),
    ({"site": "Plant 1"}, {"edgefleet_broker_host": "h"}, "site name must be"),
    ({"site": "p"}, {}, "no broker"),
    ({"site": "p", "broker_host": "h", "tls": False, "broker_port": 70000}, {}, "broker_port 70000 is not a port"),
    ({"site": "p", "broker_host": "h", "ca_file": "/nonexistent/ca.crt"}, {}, "/nonexistent/ca.crt does not exist"),
    ({"site": "p", "broker_host": "h", "tls": False}, {}, "no password for MQTT user controller"),
    ({"site": "p", "broker_host": "h", "tls": False}, {"edgefleet_secrets_dir": "/nonexistent"},
     "cannot read /nonexistent/mqtt/controller"),
])
def test_broker_settings_errors_name_the_setting(args, task_vars, message):
    with pytest.raises(fleetmqtt.FleetMqttError, match=message.replace("(", r"\(")):
        fleetmqtt.broker_settings(args, task_vars)


def test_site_vars_templates_only_the_broker_settings_and_names_a_variable_that_does_not_resolve():
    def template(value):
        if value == "{{ nope }}":
            raise ValueError("'nope' is undefined")
        return value.replace("{{ inventory_dir }}", "/inv") if isinstance(value, str) else value

    task_vars = {"edgefleet_secrets_dir": "{{ inventory_dir }}/secrets", "edgefleet_broker_port": 1883,
                 "unrelated": "{{ nope }}"}
    assert fleetmqtt.site_vars(task_vars, template) == {"edgefleet_secrets_dir": "/inv/secrets",
                                                        "edgefleet_broker_port": 1883}
    with pytest.raises(fleetmqtt.FleetMqttError, match="inventory variable edgefleet_broker_host: 'nope' is undefined"):
        fleetmqtt.site_vars(dict(task_vars, edgefleet_broker_host="{{ nope }}"), template)


# --- the push over a session: acks, held offline statuses, a lost session ---------------------------------

PSU, OVEN, ENV = "psu-ktcyat68", "oven-tvcft64q", "env-yy1ka51y"
# fleetmqtt as fleetcfg imports it (through the collection): its SessionLost is the one Push catches
fm = fleetcfg.fleetmqtt


class FakeSession(object):
    """A session on a fake clock: *script* maps a time to what happens then:
    messages to deliver (Message tuples) or "lost" (the broker goes away
    until *back_at*). Every publish is recorded with the time."""

    def __init__(self, script, back_at=None):
        self.t = 0.0
        self.script = sorted(script.items())
        self.back_at = back_at
        self.up = True
        self.told = True
        self.inbox = []
        self.published = []
        self.reconnects = 0

    def clock(self):
        return self.t

    def _advance(self, to):
        while self.script and self.script[0][0] <= to:
            at, what = self.script.pop(0)
            if what == "lost":
                self.up, self.told = False, False
            elif self.up:
                self.inbox += what
        self.t = to

    def publish(self, device_id, channel, payload, retain=False):
        if not self.up:
            raise fm.SessionLost("down")
        self.published.append((self.t, device_id, json.loads(payload)["version"]))

    def flush(self, timeout=30.0):
        if not self.up:
            raise fm.SessionLost("down")

    def events(self, timeout=0.0):
        self._advance(self.t + timeout)
        out, self.inbox = self.inbox, []
        if not out and not self.up and not self.told:
            self.told = True
            raise fm.SessionLost("fake broker restart")
        return out

    def reconnect(self, timeout=10.0):
        self.reconnects += 1
        if self.back_at is None or self.t + timeout < self.back_at:
            self._advance(self.t + timeout)
            raise fm.SessionLost("still down")
        self._advance(max(self.t, self.back_at))
        self.up = True


def msg(device, channel, payload, retain=False):
    return fm.Message(device, channel, json.dumps(payload).encode(), retain)


def outcomes_for(*devices):
    return [fleetcfg.Outcome(fleetcfg.Plan(d, {"setpoint_c": 71}, cfg(42, setpoint_c=70), status(42), NOW))
            for d in devices]


def test_push_confirms_by_ack_and_holds_an_offline_status_before_it_settles_anyone():
    outs = outcomes_for(PSU, OVEN)
    v = outs[0].plan.version
    session = FakeSession({0.2: [msg(PSU, "cfg/ack", {"version": v, "result": "applied"}),
                                 msg(OVEN, "status", {"online": False})]})
    push = fleetcfg.Push(session, outs, 30, clock=session.clock)
    push.run()
    assert [(d, ver) for _t, d, ver in session.published] == [(PSU, v), (OVEN, v)]
    assert outs[0].result == "applied"
    assert outs[1].result == "offline" and outs[1].detail == "went offline before it answered"
    assert 0.2 + fleetcfg.HOLD_S <= session.t < 0.2 + fleetcfg.HOLD_S + 1, "offline counted before it was held"
    assert push.outages == []


def test_push_rides_out_a_broker_restart_and_takes_a_live_status_as_the_ack():
    """The broker sends every will, then closes the session; back 3 s later.
    PSU acked while the controller was away: its live status says so. OVEN
    answers the config published again. ENV stays away: offline at the end."""
    outs = outcomes_for(PSU, OVEN, ENV)
    v = outs[0].plan.version
    wills = [msg(d, "status", {"online": False}) for d in (PSU, OVEN, ENV)]
    session = FakeSession({0.4: wills, 0.6: "lost",
                           3.8: [msg(PSU, "status", {"online": True, "cfg_version": v}, retain=True),
                                 msg(ENV, "status", {"online": False}, retain=True)],
                           4.0: [msg(OVEN, "cfg/ack", {"version": v, "result": "applied"})]},
                          back_at=3.6)
    said = []
    push = fleetcfg.Push(session, outs, 10, connect_timeout=1.0, clock=session.clock, say=said.append)
    push.run()
    assert [o.result for o in outs] == ["applied", "applied", "offline"], [(o.result, o.detail) for o in outs]
    assert "broker outage" in outs[2].detail
    assert len(push.outages) == 1 and push.outages[0]["back_after_s"] == pytest.approx(3.6 - 0.8, abs=0.3)
    # the pending ones again after the outage, each with the same version
    again = [(d, ver) for t, d, ver in session.published if t > 1]
    assert sorted(again) == sorted([(PSU, v), (OVEN, v), (ENV, v)])
    assert any("lost the broker session" in s for s in said) and any("back after" in s for s in said)
    # the deadline moved by the outage: ENV waited the whole timeout after the session was back
    assert session.t >= 10 + push.outages[0]["back_after_s"]


def test_push_survives_a_session_lost_while_flushing():
    outs = outcomes_for(PSU)
    v = outs[0].plan.version
    session = FakeSession({1.5: [msg(PSU, "cfg/ack", {"version": v, "result": "applied"})]}, back_at=1.0)
    session.up, session.told = False, True  # lost between the publish and its PUBACK
    session.publish = lambda *a, **kw: FakeSession.publish(session, *a, **kw) if session.up else \
        session.published.append((session.t, PSU, v))
    push = fleetcfg.Push(session, outs, 10, connect_timeout=0.5, clock=session.clock)
    push.run()
    assert outs[0].result == "applied" and len(push.outages) == 1


def test_push_gives_up_when_the_broker_is_not_back_within_the_timeout():
    outs = outcomes_for(PSU)
    session = FakeSession({0.2: "lost"})
    push = fleetcfg.Push(session, outs, 5, connect_timeout=1.0, clock=session.clock)
    with pytest.raises(fm.FleetMqttError, match="not back within 5 s"):
        push.run()
    assert session.reconnects >= 4 and session.t < 0.2 + 5 + 1.5


@pytest.mark.parametrize("payload,message", [(b"", "not JSON"), (b"{nope", "not JSON"), (b"\xff", "not JSON"),
                                             (None, "not JSON"), (b"[1]", "not a JSON object but list"),
                                             (b"[" * 100000, "not JSON")])
def test_a_payload_that_holds_no_json_object_is_named(payload, message):
    with pytest.raises(ValueError, match=message):
        fm.json_object(payload)
    assert fm.decode(payload) is None


def test_a_json_object_payload_is_decoded():
    assert fm.json_object(b'{"online": true}') == fm.decode(b'{"online": true}') == {"online": True}


def test_publishing_while_the_session_is_down_is_a_lost_session():
    session = fm.FleetSession("127.0.0.1", 1, "controller", "pw", "lab")  # never connected
    with pytest.raises(fm.SessionLost, match="down"):
        session.publish(PSU, "cfg", b"{}", retain=True)
    session._channels = ["cfg", "status"]
    session.unsubscribe(["cfg"])
    assert session._channels == ["status"], "reconnect would subscribe to an unsubscribed channel again"
