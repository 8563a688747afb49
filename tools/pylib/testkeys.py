"""Throw-away OTA signing keys for tests and benchmarks: never a site's key.

    k = testkeys.site_key(secrets_dir)   # <secrets>/signing/current.{key,pub}, as the ota_signing role makes them
    k.public                             # the 130-hex public key a device gets in device.json
    cmd_fields = k.sign(image)           # image {payload?, version, size, sha256} -> + security_version, signature

Keys come from plugins/module_utils/otasign.py, the code the controller
uses, so a signature made here is exactly what a device will check.
"""

import os
import pathlib
import sys

_MODULE_UTILS = str(pathlib.Path(__file__).resolve().parents[2] / "plugins" / "module_utils")
if _MODULE_UTILS not in sys.path:
    sys.path.insert(0, _MODULE_UTILS)

import otasign  # noqa: E402


class TestKey:
    """One key: .key (private key object), .public (hex), .path and
    .public_path when written to a directory."""

    __test__ = False  # not a pytest test class

    def __init__(self, key=None, path=None, public_path=None):
        self.key = key if key is not None else otasign.generate_key()
        self.public = otasign.public_key_hex(self.key)
        self.path, self.public_path = path, public_path

    @property
    def public_hex(self):
        return self.public

    def signature(self, payload, version, size, sha256, security_version=0):
        return otasign.sign_entry(self.key, payload, version, size, sha256, security_version)

    def sign(self, image, security_version=None):
        """*image* with security_version (its own, else the argument, else 0)
        and the signature over it; payload defaults to app."""
        sv = image.get("security_version", 0) if security_version is None else security_version
        signed = dict(image, security_version=sv)
        signed["signature"] = self.signature(image.get("payload", "app"), image["version"], image["size"],
                                             image["sha256"], sv)
        return signed


    def sign_command(self, cmd, security_version=0):
        """A copy of the ota command *cmd* with its security_version and signature."""
        return self.sign(cmd, security_version)

    def handover(self, cmd_id, new_public_hex):
        """A signing_key command handing devices that trust this key over to *new_public_hex*."""
        import contract

        # signed as otasign.sign_handover does, without its check that the
        # new key is a curve point: tests hand devices bad keys on purpose
        return contract.signing_key_command(cmd_id, new_public_hex,
                                            otasign.sign(self.key, contract.key_rotation_message(new_public_hex)))


def new_key():
    """A key in memory only."""
    return TestKey(otasign.generate_key())


def site_key(secrets_dir):
    """The site key of a test's secrets directory (<secrets>/signing/current.*),
    created the way the ota_signing role creates it; the same key on later calls."""
    done = otasign.ensure_key(os.path.join(str(secrets_dir), "signing"), "current")
    return TestKey(done["key"], done["key_path"], done["public_key_path"])
