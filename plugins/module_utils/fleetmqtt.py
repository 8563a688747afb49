# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Ansible side: one MQTT session to a site broker for the controller-side fleet plugins
(the device_config and ota_rollout action plugins, the mqtt_fleet inventory
plugin): connect as the controller's service user, take a snapshot of the
retained messages of some channels, follow them live, publish many messages
and wait for their acknowledgements.

Controller-side only (paho-mqtt on the Ansible controller); the device
contract it speaks is contract.py.

The end of a subscription's retained messages: MQTT 3.1.1 does not mark it.
After subscribing, the session subscribes to a topic of its own
(``site/<site>/_controller/<client id>``) and publishes one message there.
The broker delivers a client's messages in order, so when that message comes
back every retained message of the earlier subscription has arrived
(:meth:`FleetSession.sync`). The controller user needs readwrite on
``site/<site>/_controller/#``: the mosquitto role's ACL grants it.

Messages go to one queue that the caller drains with :meth:`events`;
subscriptions are QoS 0 so that a snapshot of 10,000 devices never meets
the broker's queue limit for QoS 1 messages (``max_queued_messages``); the
session is on TCP to an online client, and anything a device repeats is
retained or answered again."""

import collections
import json
import os
import ssl
import threading
import time
import uuid

try:
    from ansible_collections.edgefleet.site.plugins.module_utils import contract
except ImportError:  # tests import it from plugins/module_utils directly
    import contract

try:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    HAS_PAHO = True
    PAHO_ERROR = None
except ImportError as e:  # reported by the plugins with what to install
    HAS_PAHO = False
    PAHO_ERROR = str(e)

CONNACK_REASONS = {
    1: "the broker refused the protocol version",
    2: "the broker refused the client id",
    3: "the broker is unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class FleetMqttError(Exception):
    pass


class SessionLost(FleetMqttError):
    """The session to the broker closed (a broker restart, a network cut):
    :meth:`FleetSession.reconnect` brings it back."""


def require_paho():
    if not HAS_PAHO:
        raise FleetMqttError("the fleet plugins need paho-mqtt 2.x on the Ansible controller (pip install "
                             "paho-mqtt; it is in requirements.txt): %s" % PAHO_ERROR)


# The broker options of the fleet action plugins (documented once, in
# plugins/doc_fragments/fleet_broker.py).
BROKER_ARGS = dict(
    site=dict(type="str"),
    broker_host=dict(type="str"),
    broker_port=dict(type="int"),
    tls=dict(type="bool"),
    ca_file=dict(type="path"),
    username=dict(type="str", default="controller"),
    password=dict(type="str", no_log=True),
    connect_timeout=dict(type="float", default=10.0),
)


Message = collections.namedtuple("Message", "device_id channel payload retain")


def json_object(payload):
    """The JSON object (a dict) an MQTT payload holds; ValueError saying what
    it holds instead: no JSON (empty, malformed, not UTF-8, nested too deep)
    or JSON that is not an object."""
    try:
        value = json.loads(payload)
    except (ValueError, TypeError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ValueError("payload is not JSON (%s)" % e)
    if not isinstance(value, dict):
        raise ValueError("payload is not a JSON object but %s" % type(value).__name__)
    return value


def decode(payload):
    """The JSON object a payload holds, or None (a message that is missing,
    empty, malformed or not an object): what the fleet plugins make of the
    devices' status, acks and reports, which they never trust to be well
    formed."""
    try:
        return json_object(payload)
    except ValueError:
        return None


# The inventory variables broker_settings reads (the action plugins template
# them first: inventories write them as templates, such as
# edgefleet_secrets_dir: "{{ inventory_dir | dirname | dirname }}/secrets/<site>").
SITE_VARS = ("edgefleet_site", "edgefleet_broker_host", "edgefleet_controller_address", "edgefleet_fleet_tls",
             "edgefleet_broker_port",
             "edgefleet_broker_tls_port", "edgefleet_secrets_dir", "mosquitto_passwords")


def site_vars(task_vars, template):
    """The SITE_VARS that *task_vars* has, each passed through *template*
    (the action plugin's templar), as broker_settings takes them. A variable
    that does not resolve raises FleetMqttError naming it."""
    out = {}
    for name in SITE_VARS:
        if name in task_vars:
            try:
                out[name] = template(task_vars[name])
            except Exception as e:  # the templar's errors (undefined variables, bad filters) name no variable
                raise FleetMqttError("inventory variable %s: %s" % (name, e))
    return out


def broker_settings(args, task_vars, read_file=None):
    """The broker connection of a fleet plugin: each setting from the task's
    arguments, else from the site inventory's variables. Returns a dict with
    host, port, tls, ca_file, username, password, site; raises FleetMqttError
    naming the missing or bad setting and where it was looked for."""
    read_file = read_file or _read_secret

    def pick(arg, var, default=None):
        value = args.get(arg)
        if value is None:
            value = task_vars.get(var, default)
        return value

    site = pick("site", "edgefleet_site")
    if not site:
        raise FleetMqttError("no site: set the task's site or the inventory variable edgefleet_site")
    try:
        contract.check_site(site)
    except contract.ContractError as e:
        raise FleetMqttError("site: %s" % e)
    # edgefleet_broker_host is the broker as the Ansible controller reaches
    # it; where it is not set, that is the address devices dial too
    host = pick("broker_host", "edgefleet_broker_host") or task_vars.get("edgefleet_controller_address")
    if not host:
        raise FleetMqttError("no broker: set the task's broker_host or the inventory variable edgefleet_broker_host "
                             "(or edgefleet_controller_address, which it defaults to)")
    tls = pick("tls", "edgefleet_fleet_tls", True)
    if not isinstance(tls, bool):
        raise FleetMqttError("tls must be true or false, got %r" % (tls,))
    port = pick("broker_port", "edgefleet_broker_tls_port" if tls else "edgefleet_broker_port", 8883 if tls else 1883)
    try:
        port = int(port)
    except (TypeError, ValueError):
        port = None
    if port is None or not 0 < port < 65536:
        raise FleetMqttError("broker_port %r is not a port" % (pick("broker_port", "edgefleet_broker_port"),))
    secrets = task_vars.get("edgefleet_secrets_dir")
    ca_file = args.get("ca_file")
    if tls and not ca_file:
        if not secrets:
            raise FleetMqttError("tls needs ca_file (or edgefleet_secrets_dir, whose ca/ca.crt is the site CA)")
        ca_file = os.path.join(secrets, "ca", "ca.crt")
    if tls and not os.path.isfile(ca_file):
        raise FleetMqttError("the site CA %s does not exist (ca_file)" % ca_file)
    username = args.get("username") or "controller"
    password = args.get("password")
    where = "the task's password"
    if password is None:
        password = (task_vars.get("mosquitto_passwords") or {}).get(username)
        where = "mosquitto_passwords[%s]" % username
    if password is None:
        if not secrets:
            raise FleetMqttError("no password for MQTT user %s: set the task's password, mosquitto_passwords, or "
                                 "edgefleet_secrets_dir (where the mosquitto role keeps generated ones)" % username)
        path = os.path.join(secrets, "mqtt", username)
        where = path
        try:
            password = read_file(path)
        except (IOError, OSError) as e:
            raise FleetMqttError("no password for MQTT user %s: cannot read %s (%s); has the mosquitto role run "
                                 "for this site?" % (username, path, e.strerror or e))
    if not isinstance(password, str) or not password:
        raise FleetMqttError("the password of MQTT user %s from %s is empty or not a string" % (username, where))
    return {"host": str(host), "port": port, "tls": tls, "ca_file": ca_file if tls else None,
            "username": username, "password": password, "site": site}


def target_devices(devices, task_vars):
    """The devices a fleet task acts on: its devices option, else the play's
    hosts (so --limit works); sorted, without duplicates."""
    if devices is None:
        devices = task_vars.get("ansible_play_hosts") or []
    devices = sorted(set(devices))
    if not devices:
        raise FleetMqttError("no devices (the play's hosts, or the devices option, are empty)")
    return devices


def open_session(args, task_vars):
    """A connected FleetSession to the broker that *args* and the inventory name."""
    return FleetSession(**broker_settings(args, task_vars)).connect(args["connect_timeout"])


def _read_secret(path):
    with open(path) as f:
        return f.read().strip()


class FleetSession:
    """A paho-mqtt session on its own network thread; the caller's thread
    reads :meth:`events` and publishes."""

    def __init__(self, host, port, username, password, site, tls=False, ca_file=None, client_id=None,
                 keepalive=60, max_inflight=1000):
        require_paho()
        self.host, self.port, self.site, self.username = host, port, site, username
        self.client_id = client_id or "%s-%s" % (username, uuid.uuid4().hex[:10])
        self.sync_topic = "site/%s/_controller/%s" % (site, self.client_id)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv311,
                                  clean_session=True)
        self.client.username_pw_set(username, password)
        if tls:
            try:
                self.client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise FleetMqttError("cannot use %s as the site CA: %s" % (ca_file, e))
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        # a lost session comes back by itself (paho's network thread), soon
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.keepalive = keepalive
        self._cond = threading.Condition()
        self._queue = collections.deque()
        self._connack = None
        self._disconnected = None
        self._connected = False
        self._losses = 0  # sessions lost so far
        self._told = 0  # of which events() has raised SessionLost
        self._channels = []
        self._subacks = {}
        self._pending = collections.deque()  # MQTTMessageInfo of QoS 1 publishes not yet acknowledged
        self._syncs = set()
        self._sync_subscribed = False
        self.foreign = 0  # messages on topics that are not device topics of this site
        c = self.client
        c.on_connect, c.on_message, c.on_subscribe = self._on_connect, self._on_message, self._on_subscribe
        c.on_publish, c.on_disconnect = self._on_publish, self._on_disconnect

    # --- paho callbacks (network thread) -----------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self._connack = reason_code
            if not reason_code.is_failure:
                self._connected = True
                self._disconnected = None
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self._disconnected = reason_code
            if self._connected:
                self._losses += 1
            self._connected = False
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self._subacks[mid] = [rc.value for rc in reason_codes]
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._cond:
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg):
        if msg.topic == self.sync_topic:
            with self._cond:
                self._syncs.add(bytes(msg.payload))
                self._cond.notify_all()
            return
        parsed = contract.parse_topic(msg.topic)
        if parsed is None or parsed[0] != self.site:
            self.foreign += 1
            return
        with self._cond:
            self._queue.append(Message(parsed[2], parsed[3], msg.payload, bool(msg.retain)))
            self._cond.notify_all()

    # --- API (caller's thread) -----------------------------------------------
    def _wait(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                if self._disconnected is not None:
                    raise SessionLost("the broker %s:%d closed the session while waiting for %s (%s)"
                                      % (self.host, self.port, what, self._disconnected))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FleetMqttError("no %s from the broker %s:%d within %.1f s" % (what, self.host, self.port,
                                                                                        timeout))
                # re-check at least every 50 ms: paho marks a message published
                # around its on_publish callback, not always before it
                self._cond.wait(min(left, 0.05))

    def connect(self, timeout=10.0):
        try:
            self.client.connect(self.host, self.port, keepalive=self.keepalive)
        except ssl.SSLError as e:
            raise FleetMqttError("TLS to the broker %s:%d failed: %s" % (self.host, self.port, e))
        except (OSError, ValueError) as e:
            raise FleetMqttError("cannot connect to the broker %s:%d: %s" % (self.host, self.port, e))
        self.client.loop_start()
        try:
            self._wait(lambda: self._connack is not None, timeout, "CONNACK")
        except FleetMqttError:
            self.close()
            raise
        if self._connack.is_failure:
            code = self._connack.value
            self.close()
            raise FleetMqttError("the broker %s:%d refused user %s: %s" % (
                self.host, self.port, self.username, CONNACK_REASONS.get(code, str(self._connack))))
        return self

    def subscribe(self, channels, timeout=10.0):
        """Subscribe to *channels* of every device of the site (QoS 0) and
        return once the broker has delivered their retained messages."""
        self._channels = list(channels)
        topics = [("site/%s/+/+/%s" % (self.site, ch), 0) for ch in channels]
        with self._cond:
            result, mid = self.client.subscribe(topics)
        if result != paho.MQTT_ERR_SUCCESS:
            raise FleetMqttError("subscribe failed: %s" % paho.error_string(result))
        self._wait(lambda: mid in self._subacks, timeout, "SUBACK")
        refused = [t for (t, _qos), rc in zip(topics, self._subacks[mid]) if rc >= 0x80]
        if refused:
            raise FleetMqttError("the broker refused user %s a subscription to %s" % (self.username,
                                                                                      ", ".join(refused)))
        self.sync(timeout)

    def unsubscribe(self, channels):
        """Stop *channels* (no wait: what still arrives is the caller's to ignore);
        :meth:`reconnect` no longer subscribes to them."""
        self._channels = [c for c in self._channels if c not in channels]
        with self._cond:
            self.client.unsubscribe(["site/%s/+/+/%s" % (self.site, ch) for ch in channels])

    def sync(self, timeout=10.0):
        """Return once every message the broker had queued for this session
        before now has arrived (see the module docstring)."""
        if not self._sync_subscribed:
            with self._cond:
                result, mid = self.client.subscribe(self.sync_topic, 0)
            self._wait(lambda: mid in self._subacks, timeout, "SUBACK")
            if self._subacks[mid][0] >= 0x80:
                raise FleetMqttError("the broker refused user %s the sync topic %s: it needs readwrite on "
                                     "site/%s/_controller/# (the mosquitto role's ACL)"
                                     % (self.username, self.sync_topic, self.site))
            self._sync_subscribed = True
        token = uuid.uuid4().hex.encode()
        self.client.publish(self.sync_topic, token, qos=0)
        try:
            self._wait(lambda: token in self._syncs, timeout, "echo on %s" % self.sync_topic)
        except FleetMqttError as e:
            raise FleetMqttError("%s: user %s needs readwrite on site/%s/_controller/# (the mosquitto role's ACL)"
                                 % (e, self.username, self.site))
        with self._cond:
            self._syncs.discard(token)

    def events(self, timeout=0.0):
        """Every message that has arrived, waiting up to *timeout* seconds
        for the first one: [Message(device_id, channel, payload, retain)]."""
        with self._cond:
            if not self._queue and timeout > 0:
                self._cond.wait(timeout)
            out = list(self._queue)
            self._queue.clear()
        if not out and self._losses > self._told:
            self._told = self._losses
            raise SessionLost("the broker %s:%d closed the session (%s)"
                              % (self.host, self.port, self._disconnected))
        return out

    def reconnect(self, timeout=10.0):
        """After SessionLost: wait up to *timeout* for paho's network thread
        to connect again, then subscribe again to the channels of
        :meth:`subscribe` (a clean session keeps none): their retained
        messages arrive again. Raises SessionLost when it did not come back."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._connected:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SessionLost("the broker %s:%d is not back within %.1f s" % (self.host, self.port, timeout))
                self._cond.wait(min(left, 0.1))
            self._told = self._losses
            self._sync_subscribed = False
        if self._channels:
            self.subscribe(self._channels, timeout=max(0.5, deadline - time.monotonic()))

    def connected(self):
        return self._connected

    def publish(self, device_id, channel, payload, retain=False, qos=1):
        """Queue one message to a device topic; :meth:`flush` waits for its PUBACK.
        SessionLost while the session is down: paho keeps a QoS 1 message and
        sends it once the session is back, but a caller that republishes after
        :meth:`reconnect` does not depend on that."""
        info = self.client.publish(contract.topic(self.site, device_id, channel), payload, qos=qos, retain=retain)
        if info.rc == paho.MQTT_ERR_NO_CONN:
            if qos:
                with self._cond:
                    self._pending.append(info)
            raise SessionLost("the session to the broker %s:%d is down: publish to %s waits for it"
                              % (self.host, self.port, device_id))
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise FleetMqttError("publish to %s failed: %s" % (device_id, paho.error_string(info.rc)))
        if qos:
            with self._cond:
                self._pending.append(info)
        return info

    def _all_acked(self):
        while self._pending and self._pending[0].is_published():
            self._pending.popleft()
        return not self._pending

    def flush(self, timeout=30.0):
        """Wait until the broker acknowledged every QoS 1 message published."""
        self._wait(self._all_acked, timeout, "PUBACK for %d messages" % len(self._pending))

    def close(self):
        try:
            self.client.disconnect()
        except Exception:
            pass
        self.client.loop_stop()
