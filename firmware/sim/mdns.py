"""mDNS for a simulated fleet on a plant network, as ESP32 boards answer it.

An ESP32 running MicroPython answers multicast DNS for its host name
(``network.hostname()``, set to the device id: ``<id>.local``). Each
simulated device here does the same from one process, with python-zeroconf
(Debian's python3-zeroconf): an A record ``<id>.local`` for the address the
fleet runs on, and a DNS-SD service ``<id>._http._tcp.local.`` for its
``/metrics`` (port, and ``path=/metrics`` in its TXT record), so a
controller resolves the names Prometheus scrapes and can browse the fleet.
"""

import logging
import socket

log = logging.getLogger("sim.mdns")
SERVICE = "_http._tcp.local."


def plant_address():
    """This host's address on the plant network: where the fleet's devices
    are reached (the address of the host name, as Docker's DNS gives it)."""
    address = socket.gethostbyname(socket.gethostname())
    if address.startswith("127."):
        raise RuntimeError("this host's name resolves to %s: not an address on a plant network" % address)
    return address


class Responder:
    """Answers mDNS for every device with a /metrics port; close() says goodbye."""

    def __init__(self, address):
        try:
            from zeroconf import ServiceInfo, Zeroconf
        except ImportError as e:
            raise RuntimeError("mDNS needs python-zeroconf (Debian: python3-zeroconf): %s" % e)
        self._info = ServiceInfo
        self.address = address
        self.zc = Zeroconf()
        self.infos = []

    def register(self, device_id, port):
        info = self._info(SERVICE, "%s.%s" % (device_id, SERVICE), addresses=[socket.inet_aton(self.address)],
                          port=port, properties={"path": "/metrics"}, server="%s.local." % device_id)
        self.zc.register_service(info)
        self.infos.append(info)

    def close(self):
        for info in self.infos:
            try:
                self.zc.unregister_service(info)
            except Exception as e:  # leaving anyway: the records expire on their own
                log.debug("mDNS goodbye for %s failed: %r", info.server, e)
        self.zc.close()
