"""Throw-away ECDSA P-256 signing keys for tests and benchmarks: they sign
OTA entries and key handovers exactly as the site's key does (the bytes
come from the contract), so devices verify them as they would a site's."""

import contract
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils


class TestKey:
    __test__ = False  # not a pytest class

    def __init__(self):
        self.private = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_hex(self):
        return self.private.public_key().public_bytes(serialization.Encoding.X962,
                                                      serialization.PublicFormat.UncompressedPoint).hex()

    def sign(self, message):
        """r||s of *message* as the contract's hex."""
        r, s = utils.decode_dss_signature(self.private.sign(message, ec.ECDSA(hashes.SHA256())))
        return (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()

    def sign_command(self, cmd, security_version=0):
        """A copy of the ota command *cmd* with security_version and its signature."""
        cmd = dict(cmd, security_version=security_version)
        cmd["signature"] = self.sign(contract.ota_signed_message(cmd["payload"], cmd["version"], cmd["size"],
                                                                 cmd["sha256"], security_version))
        return cmd

    def handover(self, cmd_id, new_public_hex):
        """A signing_key command handing devices that trust this key over to *new_public_hex*."""
        return contract.signing_key_command(cmd_id, new_public_hex,
                                            self.sign(contract.key_rotation_message(new_public_hex)))
