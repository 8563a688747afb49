"""A small synchronous wrapper around paho-mqtt for tests and benchmarks:
connect, wait for CONNACK/SUBACK/PUBACK, keep every message received.
Used by the Molecule verifiers and the integration tests; real MQTT
sessions against a real broker.

Every message stays in ``history`` for the life of the client, so a check
that something was *not* delivered can look again at the end of a test: a
forbidden message that arrives late is still caught, never skipped over by
a later ``expect``."""

import ssl
import threading
import time
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


class MqttError(AssertionError):
    pass


class Client:
    def __init__(self, port, user=None, password=None, host="127.0.0.1", ca_file=None, client_id=None,
                 tls_default_trust=False, clean_session=True):
        self.host, self.port = host, port
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"{user or 'anon'}-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv311, clean_session=clean_session)
        if user is not None:
            self.client.username_pw_set(user, password)
        if ca_file:
            self.client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        elif tls_default_trust:
            self.client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        self.history = []  # every message received, in order
        self._cursor = 0  # expect() looks from here on
        self._arrived = threading.Condition()
        self.connack = None
        self._connected = threading.Event()
        self._subacks = {}
        self._suback_events = {}
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    # callbacks
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        self._connected.set()

    def _on_message(self, client, userdata, msg):
        with self._arrived:
            self.history.append(msg)
            self._arrived.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._lock:
            self._subacks[mid] = reason_codes
            ev = self._suback_events.setdefault(mid, threading.Event())
        ev.set()

    # API
    def connect(self, timeout=5.0):
        """Connect; return the CONNACK reason code, or None when none came."""
        self._connected.clear()
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self._connected.wait(timeout)
        return self.connack

    def connect_ok(self, timeout=5.0):
        rc = self.connect(timeout)
        if rc is None or rc.is_failure:
            self.close()
            raise MqttError(f"connect to {self.host}:{self.port} as {self.client._username!r} failed: {rc}")
        return self

    def subscribe(self, topic, qos=1, timeout=5.0):
        """Subscribe; return the granted QoS list (0x80 = refused)."""
        with self._lock:
            result, mid = self.client.subscribe(topic, qos)
            ev = self._suback_events.setdefault(mid, threading.Event())
        if result != paho.MQTT_ERR_SUCCESS:
            raise MqttError(f"subscribe {topic} failed locally: {result}")
        if not ev.wait(timeout):
            raise MqttError(f"no SUBACK for {topic} within {timeout}s")
        return [rc.value for rc in self._subacks[mid]]

    def publish(self, topic, payload, qos=1, retain=False, timeout=5.0):
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise MqttError(f"publish to {topic} not acknowledged within {timeout}s")

    def wait_for(self, predicate, timeout=5.0, what="a matching message", start=0):
        """The first message from history[start:] for which predicate(msg)
        is true, waiting up to *timeout* seconds for it to arrive."""
        deadline = time.monotonic() + timeout
        i = start
        with self._arrived:
            while True:
                while i < len(self.history):
                    if predicate(self.history[i]):
                        return self.history[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MqttError(f"no {what} within {timeout}s (received {len(self.history)} messages)")
                self._arrived.wait(left)

    def expect(self, topic, payload=None, timeout=5.0):
        """Wait for the next message on *topic* (and with *payload* if given)
        after the one the previous expect() returned."""
        msg = self.wait_for(lambda m: m.topic == topic and (payload is None or m.payload == payload), timeout,
                            f"message on {topic} (payload {payload!r})", self._cursor)
        self._cursor = self.history.index(msg) + 1
        return msg

    def received(self, topic, payload=None, wait=2.0):
        """True when such a message is (or arrives within *wait* seconds) in the history."""
        try:
            self.wait_for(lambda m: m.topic == topic and (payload is None or m.payload == payload), wait)
            return True
        except MqttError:
            return False

    def seen(self, topic, payload=None):
        """True when such a message is anywhere in the history (no waiting)."""
        with self._arrived:
            return any(m.topic == topic and (payload is None or m.payload == payload) for m in self.history)

    def messages(self, topic_suffix=None):
        """A snapshot of the history, optionally only topics ending with *topic_suffix*."""
        with self._arrived:
            return [m for m in self.history if topic_suffix is None or m.topic.endswith(topic_suffix)]

    def close(self):
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
