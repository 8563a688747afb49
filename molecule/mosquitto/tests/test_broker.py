"""The broker as devices and services see it, through real MQTT sessions
from the host to the container's ports published on 127.0.0.1."""

import os
import pathlib
import ssl
import subprocess
import time
import uuid

import pytest
from conftest import DEVICE_A, DEVICE_B, PLAIN_PORT, SITE, TLS_PORT, topic
from mqttc import Client

testinfra_hosts = ["ansible://controller"]


def unique():
    return uuid.uuid4().hex.encode()


def wait_for_port(port, timeout=30):
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"port {port} did not come back within {timeout}s")


def test_anonymous_refused():
    with Client(PLAIN_PORT) as anon:
        rc = anon.connect()
        assert rc is not None and rc.is_failure, f"anonymous client was accepted: {rc}"


def test_wrong_password_refused(password):
    with Client(PLAIN_PORT, user=DEVICE_A, password=password(DEVICE_A) + "x") as c:
        rc = c.connect()
        assert rc is not None and rc.is_failure, f"wrong password accepted: {rc}"


def test_device_publishes_its_own_state(connect):
    sub = connect("telegraf")
    assert sub.subscribe(f"site/{SITE}/+/+/state") == [1]
    payload = unique()
    connect(DEVICE_A).publish(topic(DEVICE_A, "state"), payload)
    msg = sub.expect(topic(DEVICE_A, "state"), payload)
    assert msg.payload == payload


def assert_denied(client, topic_name, payload, control, what):
    """*payload* on *topic_name* must never reach *client*. *control* is a
    delivery the client is allowed, made after the denied one: once it has
    arrived, a denied message that the broker had let through would have
    arrived too (one broker thread, in order), so looking at the whole
    history then cannot miss a late delivery."""
    assert not client.received(topic_name, payload, wait=1.0), what
    control()
    assert not client.seen(topic_name, payload), what + " (late)"


def test_device_cannot_publish_another_devices_state(connect):
    sub = connect("telegraf")
    assert sub.subscribe(topic(DEVICE_B, "state")) == [1]
    forged, genuine = unique(), unique()
    # MQTT 3.1.1 gives the publisher no error: the broker drops it silently.
    connect(DEVICE_A).publish(topic(DEVICE_B, "state"), forged)

    def control():  # the subscriber does see the owner's own publish
        connect(DEVICE_B).publish(topic(DEVICE_B, "state"), genuine)
        sub.expect(topic(DEVICE_B, "state"), genuine)

    assert_denied(sub, topic(DEVICE_B, "state"), forged, control, "forged state reached the subscriber")


# Mosquitto 2.0 answers every SUBSCRIBE with a granted SUBACK and enforces
# the ACL when it delivers, so a denied subscription is proved by what the
# subscriber receives, next to a control delivery that does arrive.

def test_device_cannot_subscribe_to_another_devices_cmd(connect):
    intruder = connect(DEVICE_A)
    intruder.subscribe(topic(DEVICE_B, "cmd"))
    assert intruder.subscribe(topic(DEVICE_A, "cmd")) == [1]
    owner = connect(DEVICE_B)
    assert owner.subscribe(topic(DEVICE_B, "cmd")) == [1]
    controller = connect("controller")
    cmd, own = (b'{"id": "%s", "cmd": "reboot"}' % unique() for _ in range(2))
    controller.publish(topic(DEVICE_B, "cmd"), cmd)
    owner.expect(topic(DEVICE_B, "cmd"), cmd)

    def control():
        controller.publish(topic(DEVICE_A, "cmd"), own)
        intruder.expect(topic(DEVICE_A, "cmd"), own)

    assert_denied(intruder, topic(DEVICE_B, "cmd"), cmd, control, "another device's cmd was delivered")


def test_device_reads_only_its_own_retained_cfg(connect):
    controller = connect("controller")
    cfg = b'{"version": 7, "publish_interval_s": 5, "nonce": "%s"}' % unique()
    controller.publish(topic(DEVICE_A, "cfg"), cfg, retain=True)
    device = connect(DEVICE_A)
    assert device.subscribe(topic(DEVICE_A, "cfg")) == [1]
    assert device.expect(topic(DEVICE_A, "cfg"), cfg).retain
    other = connect(DEVICE_B)
    other.subscribe(topic(DEVICE_A, "cfg"))
    assert other.subscribe(topic(DEVICE_B, "cfg")) == [1]
    own = b'{"version": 8, "nonce": "%s"}' % unique()

    def control():
        controller.publish(topic(DEVICE_B, "cfg"), own, retain=True)
        other.expect(topic(DEVICE_B, "cfg"), own)

    assert_denied(other, topic(DEVICE_A, "cfg"), cfg, control, "another device's cfg was delivered")


def test_device_cannot_write_its_own_cfg_or_cmd(connect):
    controller = connect("controller")
    watcher = connect("controller")
    assert watcher.subscribe(topic(DEVICE_A, "cfg")) == [1]
    rogue, genuine = unique(), unique()
    connect(DEVICE_A).publish(topic(DEVICE_A, "cfg"), rogue)

    def control():
        controller.publish(topic(DEVICE_A, "cfg"), genuine, retain=True)
        watcher.expect(topic(DEVICE_A, "cfg"), genuine)

    assert_denied(watcher, topic(DEVICE_A, "cfg"), rogue, control, "a device wrote its own cfg")


def test_service_users_get_least_privilege(connect):
    controller = connect("controller")
    telegraf = connect("telegraf")
    telegraf.subscribe(topic(DEVICE_A, "cmd"))
    telegraf.subscribe(topic(DEVICE_A, "cfg"))
    assert telegraf.subscribe(topic(DEVICE_A, "state")) == [1]
    cmd, cfg = unique(), unique()
    controller.publish(topic(DEVICE_A, "cmd"), cmd)
    controller.publish(topic(DEVICE_A, "cfg"), cfg, retain=True)
    device = connect(DEVICE_A)

    def telegraf_control():  # telegraf does read telemetry
        state = unique()
        device.publish(topic(DEVICE_A, "state"), state)
        telegraf.expect(topic(DEVICE_A, "state"), state)

    assert_denied(telegraf, topic(DEVICE_A, "cmd"), cmd, telegraf_control, "telegraf received a cmd")
    assert_denied(telegraf, topic(DEVICE_A, "cfg"), cfg, telegraf_control, "telegraf received a cfg")
    # telegraf cannot publish at all
    state_watcher = connect(DEVICE_A)
    assert state_watcher.subscribe(topic(DEVICE_A, "cmd")) == [1]
    forged = unique()
    telegraf.publish(topic(DEVICE_A, "cmd"), forged)

    def cmd_control():
        genuine = unique()
        controller.publish(topic(DEVICE_A, "cmd"), genuine)
        state_watcher.expect(topic(DEVICE_A, "cmd"), genuine)

    assert_denied(state_watcher, topic(DEVICE_A, "cmd"), forged, cmd_control, "telegraf could send a cmd")
    # the controller reads telemetry (a rollout's soak watches each device's
    # uptime and silence) but cannot forge it; exporter_sys reads $SYS
    assert controller.subscribe(f"site/{SITE}/+/+/state") == [1]
    state = unique()
    device.publish(topic(DEVICE_A, "state"), state)
    controller.expect(topic(DEVICE_A, "state"), state)
    forged_state = unique()
    controller.publish(topic(DEVICE_A, "state"), forged_state)
    assert_denied(telegraf, topic(DEVICE_A, "state"), forged_state, telegraf_control,
                  "the controller could forge telemetry")
    exporter = connect("exporter_sys")
    assert exporter.subscribe("$SYS/broker/uptime") == [1]
    assert exporter.expect("$SYS/broker/uptime", timeout=15).payload.endswith(b"seconds")


def test_device_answers_commands_on_cmd_ack(connect):
    controller = connect("controller")
    assert controller.subscribe(f"site/{SITE}/+/+/cmd/ack") == [1]
    answer, forged = unique(), unique()
    connect(DEVICE_A).publish(topic(DEVICE_A, "cmd/ack"), answer)
    controller.expect(topic(DEVICE_A, "cmd/ack"), answer)
    connect(DEVICE_B).publish(topic(DEVICE_A, "cmd/ack"), forged)

    def control():
        genuine = unique()
        connect(DEVICE_A).publish(topic(DEVICE_A, "cmd/ack"), genuine)
        controller.expect(topic(DEVICE_A, "cmd/ack"), genuine)

    assert_denied(controller, topic(DEVICE_A, "cmd/ack"), forged, control, "a device answered for another")


def test_tls_listener_accepts_a_client_that_trusts_the_site_ca(connect, secrets_dir):
    c = connect("controller", port=TLS_PORT, ca_file=str(secrets_dir / "ca" / "ca.crt"))
    assert c.subscribe(topic(DEVICE_A, "status")) == [1]


def test_tls_listener_refuses_plain_text(password):
    with Client(TLS_PORT, user="controller", password=password("controller")) as plain:
        try:
            rc = plain.connect(timeout=3)
        except OSError:
            rc = None
        assert rc is None or rc.is_failure, f"plain MQTT accepted on the TLS port: {rc}"


def test_tls_listener_is_not_trusted_without_the_site_ca(password):
    with Client(TLS_PORT, user="controller", password=password("controller"), tls_default_trust=True) as c:
        with pytest.raises(ssl.SSLError):
            c.connect(timeout=3)


def test_retained_status_survives_a_broker_restart(host, connect):
    status = b'{"online": true, "fw": "1.0.0", "nonce": "%s"}' % unique()
    connect(DEVICE_A).publish(topic(DEVICE_A, "status"), status, retain=True)
    host.run_expect([0], "systemctl restart mosquitto")
    wait_for_port(PLAIN_PORT)
    reader = connect("controller")
    assert reader.subscribe(topic(DEVICE_A, "status")) == [1]
    msg = reader.expect(topic(DEVICE_A, "status"), status, timeout=5)
    assert msg.retain


def test_broker_limits_and_sys(host):
    assert host.run_expect([0], "systemctl show mosquitto -p LimitNOFILE").stdout.strip() == "LimitNOFILE=65536"
    conf = host.file("/etc/mosquitto/mosquitto.conf").content_string
    for line in ("allow_anonymous false", "persistence true", "autosave_interval 900", "max_inflight_messages 1000",
                 "max_queued_messages 10000", "sys_interval 10"):
        assert line in conf.splitlines(), f"{line!r} missing from mosquitto.conf"
    passwd = host.file("/etc/mosquitto/edgefleet.passwd")
    assert passwd.mode == 0o640 and passwd.user == "root" and passwd.group == "mosquitto"
    users = dict(line.split(":", 1) for line in passwd.content_string.splitlines())
    assert set(users) == {"telegraf", "exporter", "exporter_sys", "controller", DEVICE_A, DEVICE_B}
    assert all(h.startswith("$7$101$") for h in users.values())
    assert host.file("/etc/mosquitto/certs/edgefleet-server.key").mode == 0o640


def test_broken_candidate_is_refused_and_live_broker_untouched(host, connect):
    bad = "/tmp/bad-mosquitto.conf"
    good = host.file("/etc/mosquitto/mosquitto.conf").content_string
    host.run_expect([0], f"cat > {bad} <<'EOF'\n{good.replace('edgefleet-server.crt', 'missing.crt')}\nEOF")
    db_before = host.run("stat -c %Y /var/lib/mosquitto/mosquitto.db").stdout
    result = host.run(f"/usr/local/libexec/edgefleet/mosquitto-check-config --config {bad}")
    assert result.rc == 1, result.stdout + result.stderr
    assert "does NOT start" in result.stderr
    good_check = host.run("/usr/local/libexec/edgefleet/mosquitto-check-config --config /etc/mosquitto/mosquitto.conf")
    assert good_check.rc == 0, good_check.stderr
    assert host.run("stat -c %Y /var/lib/mosquitto/mosquitto.db").stdout == db_before
    assert host.service("mosquitto").is_running
    connect(DEVICE_A)


def run_converge(*extra, env=None):
    """Run the scenario's converge playbook (site.yml) again; return the finished process."""
    inventory = pathlib.Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    playbook = pathlib.Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml"
    return subprocess.run(["ansible-playbook", "-i", str(inventory), str(playbook), *extra], capture_output=True,
                          text=True, timeout=900, env=dict(os.environ, **(env or {})))


def converge(*extra):
    """Re-run the scenario's converge playbook; return its output (it must pass)."""
    run = run_converge(*extra)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_listener_change_restarts_the_broker(connect, secrets_dir):
    out = converge("-e", "mosquitto_tls_version=tlsv1.3")
    assert "Restart mosquitto" in out and "Reload mosquitto" not in out
    ca = str(secrets_dir / "ca" / "ca.crt")
    c = connect("controller", port=TLS_PORT, ca_file=ca)
    assert c.client.socket().version() == "TLSv1.3"
    out = converge()
    assert "Restart mosquitto" in out
    connect("controller", port=TLS_PORT, ca_file=ca)


def test_password_change_is_applied_on_the_next_run(password, secrets_dir, connect):
    old = password(DEVICE_A)
    new = "rotated" + uuid.uuid4().hex
    (secrets_dir / "mqtt" / DEVICE_A).write_text(new + "\n")
    out = converge()
    assert "Reload mosquitto" in out and "Restart mosquitto" not in out
    assert new not in out and old not in out, "a password was printed"
    with Client(PLAIN_PORT, user=DEVICE_A, password=old) as c:
        rc = c.connect()
        assert rc is not None and rc.is_failure, "old password still accepted"
    connect(DEVICE_A, pw=new)


def test_tags_of_one_role_work_on_a_tls_site_and_drift_is_corrected(host, connect, secrets_dir):
    """--tags broker runs the broker role with the site CA it depends on; the
    same run puts back modes and owners changed by hand, without a restart."""
    host.run_expect([0], "chmod 0666 /etc/mosquitto/edgefleet.acl && chown root:root /etc/mosquitto/edgefleet.passwd"
                         " && chmod 0600 /etc/systemd/system/mosquitto.service.d/edgefleet.conf")
    out = converge("--tags", "broker")
    assert "site_ca : Publish the certificate paths" in out, "site_ca did not run under --tags broker"
    assert "Restart mosquitto" not in out and "Reload mosquitto" not in out
    acl, passwd = host.file("/etc/mosquitto/edgefleet.acl"), host.file("/etc/mosquitto/edgefleet.passwd")
    assert acl.mode == 0o640 and acl.group == "mosquitto"
    assert passwd.mode == 0o640 and passwd.group == "mosquitto"
    assert host.file("/etc/systemd/system/mosquitto.service.d/edgefleet.conf").mode == 0o644
    connect("controller", port=TLS_PORT, ca_file=str(secrets_dir / "ca" / "ca.crt"))


NEW_DEVICE = "fan-edez6pps"


def test_change_left_unapplied_by_an_interrupted_play_is_applied_next_run(host, tmp_path, secrets_dir):
    """A new device is added; the play is killed right after the password
    file and the ACL are copied into place, before the reload handler. The
    running broker still does not know the device. The next run finds live
    and staged files equal, and must still reload."""
    extra = tmp_path / "new-device.yml"
    extra.write_text("all:\n  children:\n    fleet:\n      hosts:\n"
                     f"        {NEW_DEVICE}: {{device_mac: '24:0a:c4:12:34:31'}}\n")
    callbacks = pathlib.Path(__file__).parent / "callbacks"
    env = {"ANSIBLE_CALLBACK_PLUGINS": str(callbacks), "ANSIBLE_CALLBACKS_ENABLED": "interrupt",
           "EDGEFLEET_INTERRUPT_AFTER": "mosquitto : Install the proven files"}
    # the scenario's last test: the extra device stays until the instance is destroyed
    killed = run_converge("-i", str(extra), env=env)
    assert killed.returncode == -9, f"the play was not interrupted: rc {killed.returncode}"
    assert "interrupting the play after" in killed.stdout
    assert "RUNNING HANDLER" not in killed.stdout
    assert f"{NEW_DEVICE}:" in host.file("/etc/mosquitto/edgefleet.passwd").content_string
    password = (secrets_dir / "mqtt" / NEW_DEVICE).read_text().strip()
    with Client(PLAIN_PORT, user=NEW_DEVICE, password=password) as c:
        rc = c.connect()
        assert rc is not None and rc.is_failure, "the broker knew the device before any reload"

    out = converge("-i", str(extra))
    assert "Reload mosquitto" in out, "the next run did not apply the change the interrupted run installed"
    with Client(PLAIN_PORT, user=NEW_DEVICE, password=password) as c:
        c.connect_ok()
    assert not host.file("/var/lib/edgefleet/mosquitto.reload-pending").exists
    out = converge("-i", str(extra))
    assert "Reload mosquitto" not in out and "Restart mosquitto" not in out, "the change was applied twice"
