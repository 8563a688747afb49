"""A small synchronous wrapper around paho-mqtt for tests: connect, wait
for CONNACK/SUBACK/PUBACK, collect messages. Used by the Molecule verifiers
and the integration tests; real MQTT sessions against a real broker."""

import queue
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
        self.messages = queue.Queue()
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
        self.messages.put(msg)

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

    def expect(self, topic, payload=None, timeout=5.0):
        """Wait for a message on *topic* (and with *payload* if given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if msg.topic == topic and (payload is None or msg.payload == payload):
                return msg
        raise MqttError(f"no message on {topic} (payload {payload!r}) within {timeout}s")

    def received(self, topic, payload=None, wait=2.0):
        """True when such a message arrives within *wait* seconds."""
        try:
            self.expect(topic, payload, timeout=wait)
            return True
        except MqttError:
            return False

    def close(self):
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
