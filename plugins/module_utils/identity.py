# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Device contract: device identity (docs/architecture.md, section 3.1).

A device id is ``<kind>-<short8>``: short8 is the 8-symbol Crockford base32
code (lower case, most significant 5 bits first) of BLAKE2s(MAC bytes) with a
5-byte digest. The same function names the MQTT user, the client id, the
host name (``<id>.local``) and the Grafana labels, so the firmware and the
host tooling must agree bit for bit: both use this file (part of the device
contract in plugins/module_utils: the firmware image packs it, the
simulator imports it, controller-side plugins import it as
``ansible_collections.edgefleet.site.plugins.module_utils.identity``). It
runs unchanged on MicroPython and imports nothing.

MicroPython's ``hashlib`` has no BLAKE2, so BLAKE2s (RFC 7693, unkeyed) is
implemented here in plain Python that runs on MicroPython and CPython alike.
It is only used for a few bytes at boot; speed does not matter.
"""

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"

_M32 = 0xFFFFFFFF
_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
_SIGMA = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
    (14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3),
    (11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4),
    (7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8),
    (9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13),
    (2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9),
    (12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11),
    (13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10),
    (6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5),
    (10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0),
)
# the eight G applications of one round: column step, then diagonal step
_LANES = ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
          (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14))


def _rotr(x, n):
    return ((x >> n) | (x << (32 - n))) & _M32


def _compress(h, block, counter, last):
    m = [int.from_bytes(block[i:i + 4], "little") for i in range(0, 64, 4)]
    v = list(h) + list(_IV)
    v[12] ^= counter & _M32
    v[13] ^= (counter >> 32) & _M32
    if last:
        v[14] ^= _M32
    for r in range(10):
        s = _SIGMA[r]
        for i in range(8):
            a, b, c, d = _LANES[i]
            v[a] = (v[a] + v[b] + m[s[2 * i]]) & _M32
            v[d] = _rotr(v[d] ^ v[a], 16)
            v[c] = (v[c] + v[d]) & _M32
            v[b] = _rotr(v[b] ^ v[c], 12)
            v[a] = (v[a] + v[b] + m[s[2 * i + 1]]) & _M32
            v[d] = _rotr(v[d] ^ v[a], 8)
            v[c] = (v[c] + v[d]) & _M32
            v[b] = _rotr(v[b] ^ v[c], 7)
    for i in range(8):
        h[i] ^= v[i] ^ v[i + 8]


def blake2s(data, digest_size=32):
    """Unkeyed BLAKE2s of *data* (bytes) with a digest of 1..32 bytes."""
    if not 1 <= digest_size <= 32:
        raise ValueError("blake2s digest_size must be 1..32, got %r" % (digest_size,))
    data = bytes(data)
    h = list(_IV)
    h[0] ^= 0x01010000 ^ digest_size
    n = len(data)
    offset = 0
    while n - offset > 64:
        offset += 64
        _compress(h, data[offset - 64:offset], offset, False)
    tail = data[offset:]
    _compress(h, tail + bytes(64 - len(tail)), n, True)
    return b"".join(x.to_bytes(4, "little") for x in h)[:digest_size]


def parse_mac(mac):
    """``'24:0A:C4:12:34:01'``, ``'240ac4123401'`` or 6 bytes -> 6 bytes."""
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != 6:
            raise ValueError("MAC must be 6 bytes, got %d" % len(mac))
        return bytes(mac)
    text = str(mac).strip().lower().replace(":", "").replace("-", "")
    if len(text) != 12 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError("not a MAC address: %r" % (mac,))
    return bytes(int(text[i:i + 2], 16) for i in range(0, 12, 2))


def format_mac(mac):
    """Any MAC parse_mac() takes -> ``'24:0a:c4:12:34:01'`` (the one form
    the inventory, the registry and the results use)."""
    return ":".join("%02x" % b for b in parse_mac(mac))


def _digest5(raw):
    """BLAKE2s-40 of the MAC: CPython's C BLAKE2s where there is one (the
    controller checks 10,000 ids in milliseconds instead of 1.6 s), else the
    plain-Python blake2s above (MicroPython's hashlib has none). Tests
    compare the two."""
    try:
        import hashlib
        return hashlib.blake2s(raw, digest_size=5).digest()
    except (ImportError, AttributeError, TypeError):
        return blake2s(raw, 5)


def short8(mac):
    """The 8-symbol Crockford base32 code of a MAC (40 bits, MSB first)."""
    value = int.from_bytes(_digest5(parse_mac(mac)), "big")
    return "".join(CROCKFORD[(value >> (35 - 5 * i)) & 31] for i in range(8))


def check_kind(kind):
    """A kind is 2..16 of a-z and 0-9, starting with a letter."""
    if (not isinstance(kind, str) or not 2 <= len(kind) <= 16 or not ("a" <= kind[0] <= "z")
            or any(not ("a" <= c <= "z" or "0" <= c <= "9") for c in kind)):
        raise ValueError("device kind must be 2-16 of a-z0-9 starting with a letter, got %r" % (kind,))
    return kind


def device_id(kind, mac):
    """``device_id('psu', '24:0a:c4:12:34:01') -> 'psu-ktcyat68'``."""
    return check_kind(kind) + "-" + short8(mac)


def split_device_id(device):
    """``'psu-ktcyat68' -> ('psu', 'ktcyat68')``; ValueError if malformed."""
    kind, sep, code = str(device).rpartition("-")
    if not sep or len(code) != 8 or any(c not in CROCKFORD for c in code):
        raise ValueError("not a device id (<kind>-<short8>): %r" % (device,))
    return check_kind(kind), code
