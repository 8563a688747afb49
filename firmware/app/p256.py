"""ECDSA signature verification over NIST P-256 (secp256r1) with SHA-256:
the ``ecdsa-p256-sha256`` scheme of the contract (contract.SIGNATURE_SCHEME),
verify only. Runs unchanged on CPython and on MicroPython (an ESP32 has
sha256 in hashlib but no sha512, hence P-256 and not Ed25519); it imports
nothing but hashlib.

``verify(public_key, message, signature)`` takes bytes: the public key as the
uncompressed SEC1 point 0x04||X||Y (65 bytes), the message (any length,
hashed here with SHA-256) and the signature r||s (IEEE P1363, 64 bytes).

What it checks:

- the public key (``check_public_key``): 65 bytes, prefix 0x04, X and Y
  below the field prime p, the point on the curve (y^2 = x^3 - 3x + b), not
  the point at infinity. P-256 has cofactor 1, so every such point
  generates the whole group of prime order n: no subgroup check is needed.
  An invalid key raises ValueError, from ``verify`` too: a key is checked
  once, when it is stored, and a bad one is an error of whoever stored it,
  not a signature that fails to verify.
- the signature: exactly 64 bytes (no shorter or longer encodings of r and
  s), 1 <= r < n and 1 <= s < n; then the ECDSA equation: with
  e = SHA-256(message) as a 256-bit integer, w = s^-1 mod n,
  R = (e*w mod n)*G + (r*w mod n)*Q must not be the point at infinity and
  its x coordinate mod n must equal r. Anything else returns False.

What it does not do:

- it is not constant time: it handles only public data (key, message,
  signature), so timing leaks nothing secret. Never reuse this arithmetic
  for signing or key agreement.
- no signing, no key generation, no DER signatures, no compressed points,
  no other curves or hashes; signatures are not checked for low s (ECDSA
  accepts both s and n - s, as Wycheproof's "signature malleability" case
  expects).

How: Jacobian coordinates (x = X/Z^2, y = Y/Z^3, the point at infinity has
Z = 0) with the a = -3 doubling formula, additions of an affine point
("mixed" additions, which handle the doubling and infinity cases), and
Shamir's trick: u1*G + u2*Q in one pass of 256 doublings over the bits of
both scalars, adding G, Q or G+Q (a table of three points, G+Q made affine
with one inversion). The final comparison needs no inversion: x(R) mod n
equals r iff X == r*Z^2 (mod p), or X == (r+n)*Z^2 when r+n < p. Inverses
are Fermat's: pow(a, m - 2, m) (MicroPython's three-argument pow works on
its big integers; an ESP32 build has it).
"""

import hashlib

# P-256 domain parameters (SEC 2 v2, section 2.4.2; FIPS 186-4, D.1.2.3); a = -3.
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

PUBLIC_KEY_BYTES = 65
SIGNATURE_BYTES = 64


def _bytes_like(value):
    return isinstance(value, (bytes, bytearray, memoryview))


def _point(public_key):
    """(x, y) of a valid public key; ValueError naming what is wrong."""
    if not _bytes_like(public_key):
        raise ValueError("public key must be bytes (0x04||X||Y), got %s" % type(public_key).__name__)
    if len(public_key) == 1 and public_key[0] == 0:
        raise ValueError("public key is the point at infinity (encoded 0x00)")
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError("public key must be %d bytes (uncompressed point 0x04||X||Y), got %d"
                         % (PUBLIC_KEY_BYTES, len(public_key)))
    if public_key[0] != 4:
        raise ValueError("public key must start with 0x04 (an uncompressed point), got 0x%02x" % public_key[0])
    x = int.from_bytes(public_key[1:33], "big")
    y = int.from_bytes(public_key[33:], "big")
    if x == 0 and y == 0:
        raise ValueError("public key is the point at infinity (X = Y = 0)")
    if x >= P:
        raise ValueError("public key X coordinate is not below the field prime p")
    if y >= P:
        raise ValueError("public key Y coordinate is not below the field prime p")
    if (y * y - (x * x - 3) * x - B) % P:
        raise ValueError("public key is not a point on the P-256 curve")
    return x, y


def check_public_key(public_key):
    """Return *public_key* (65 bytes, 0x04||X||Y) if it is a valid P-256
    point; otherwise raise ValueError saying what is wrong with it."""
    _point(public_key)
    return public_key


def _double(x, y, z):
    """2*(x, y, z) in Jacobian coordinates, a = -3. The point at infinity
    (z = 0) doubles to itself; P-256 has no point of order 2 (y = 0)."""
    p = P
    zz = z * z % p
    yy = y * y % p
    t = x * yy % p  # x*y^2
    m = 3 * (x - zz) * (x + zz) % p  # 3x^2 + a*z^4 with a = -3
    x3 = (m * m - 8 * t) % p
    return x3, (m * (4 * t - x3) - 8 * yy * yy) % p, 2 * y * z % p


def _add(x1, y1, z1, x2, y2):
    """(x1, y1, z1) + (x2, y2): a Jacobian point plus an affine one (not
    infinity). Handles the point at infinity, P + P and P + (-P)."""
    if not z1:
        return x2, y2, 1
    p = P
    zz = z1 * z1 % p
    h = (x2 * zz - x1) % p  # x2*z1^2 - x1
    r = (y2 * zz % p * z1 - y1) % p  # y2*z1^3 - y1
    if not h:
        if r:
            return 0, 1, 0  # P + (-P)
        return _double(x1, y1, z1)
    hh = h * h % p
    hhh = h * hh % p
    v = x1 * hh % p
    x3 = (r * r - hhh - 2 * v) % p
    return x3, (r * (v - x3) - y1 * hhh) % p, z1 * h % p


def verify(public_key, message, signature):
    """True if *signature* (r||s, 64 bytes) is a valid ECDSA P-256 SHA-256
    signature of *message* (bytes) by *public_key* (0x04||X||Y, 65 bytes);
    False for any other signature. A public key that is not a valid point
    raises ValueError (see check_public_key); a message or signature that
    is not bytes raises TypeError."""
    qx, qy = _point(public_key)
    if not _bytes_like(signature) or not _bytes_like(message):
        raise TypeError("message and signature must be bytes")
    if len(signature) != SIGNATURE_BYTES:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    e = int.from_bytes(hashlib.sha256(message).digest(), "big")  # 256 bits: no truncation for P-256
    w = pow(s, N - 2, N)
    u1 = (e * w % N).to_bytes(32, "big")
    u2 = (r * w % N).to_bytes(32, "big")
    # G + Q, affine; None when it is the point at infinity (Q = -G)
    sx, sy, sz = _add(GX, GY, 1, qx, qy)
    if sz:
        zi = pow(sz, P - 2, P)
        zz = zi * zi % P
        sx, sy = sx * zz % P, sy * zz % P * zi % P
    else:
        sx = None
    x, y, z = 0, 1, 0
    for i in range(32):
        a, b = u1[i], u2[i]
        bit = 128
        while bit:
            if z:
                x, y, z = _double(x, y, z)
            if a & bit:
                if not b & bit:
                    x, y, z = _add(x, y, z, GX, GY)
                elif sx is not None:
                    x, y, z = _add(x, y, z, sx, sy)
            elif b & bit:
                x, y, z = _add(x, y, z, qx, qy)
            bit >>= 1
    if not z:
        return False
    zz = z * z % P
    # x(R) is in [0, p) and n < p < 2n: x(R) mod n == r iff x(R) is r or r + n
    return x == r * zz % P or (r + N < P and x == (r + N) * zz % P)
