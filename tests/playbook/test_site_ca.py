"""The site_ca role with real community.crypto on the Ansible controller
(it never touches a target): renewal before expiry, reissue on a key change,
a CA key that is never replaced, early CA expiry checks, required site
variables. Each case runs ansible-playbook for real and reads the files it
left; lifetimes are short so that renewal happens without a fake clock."""

import datetime
import pathlib
import re
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLAYBOOK = """
- name: Site CA only
  hosts: controller
  gather_facts: false
  roles:
    - role: site_ca
"""


class Site:
    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.secrets = tmp_path / "secrets"
        self.ca = self.secrets / "ca"
        self.server_crt = self.ca / "servers" / "ctl01.crt"
        self.server_key = self.ca / "servers" / "ctl01.key"
        tmp_path.mkdir(parents=True, exist_ok=True)
        (tmp_path / "site.yml").write_text(PLAYBOOK)

    def inventory(self, site=True, secrets=True, address="ctl01.plant.lan"):
        host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
        if site:
            host["edgefleet_site"] = "plant"
        if secrets:
            host["edgefleet_secrets_dir"] = str(self.secrets)
        if address:
            host["edgefleet_controller_address"] = address
        inv = self.dir / "hosts.yml"
        inv.write_text("all:\n  children:\n    controller:\n      hosts:\n        ctl01:\n"
                       + "".join(f"          {k}: '{v}'\n" for k, v in host.items()))
        return inv

    def play(self, *extra, ok=True, **inventory):
        run = subprocess.run([str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i",
                              str(self.inventory(**inventory)), str(self.dir / "site.yml"), *extra],
                             capture_output=True, text=True, timeout=300, cwd=ROOT,
                             env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": "/usr/bin:/bin",
                                  "ANSIBLE_NOCOLOR": "1", "HOME": str(self.dir)})
        if ok:
            assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        else:
            assert run.returncode != 0, "the play passed: " + run.stdout[-2000:]
        return run

    @staticmethod
    def changed(run):
        return int(re.search(r"ctl01\s+: ok=\d+\s+changed=(\d+)", run.stdout).group(1))

    def cert(self, path=None):
        return x509.load_pem_x509_certificate((path or self.server_crt).read_bytes())


def days_left(cert):
    return (cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)).days


def public_bytes(obj):
    return obj.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_public_bytes(path):
    return public_bytes(serialization.load_pem_private_key(path.read_bytes(), None))


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


def test_server_certificate_is_renewed_before_expiry_then_left_alone(site):
    site.play("-e", "site_ca_server_valid_for=+20d", "-e", "site_ca_server_renew_before_days=10")
    first = site.cert()
    assert 18 <= days_left(first) <= 20
    again = site.play("-e", "site_ca_server_valid_for=+20d", "-e", "site_ca_server_renew_before_days=10")
    assert site.changed(again) == 0 and site.cert().serial_number == first.serial_number

    # 20 days left, renewal window now 25 days: reissued for the new lifetime
    renewed = site.play("-e", "site_ca_server_valid_for=+40d", "-e", "site_ca_server_renew_before_days=25")
    assert "expires on" in renewed.stdout and "within 25 days" in renewed.stdout
    second = site.cert()
    assert second.serial_number != first.serial_number and 38 <= days_left(second) <= 40
    assert public_bytes(second) == key_public_bytes(site.server_key)
    idle = site.play("-e", "site_ca_server_valid_for=+40d", "-e", "site_ca_server_renew_before_days=25")
    assert site.changed(idle) == 0 and site.cert().serial_number == second.serial_number


def test_a_lifetime_shorter_than_the_renewal_window_is_refused(site):
    run = site.play("-e", "site_ca_server_valid_for=+20d", ok=False)  # default window: 30 days
    assert "site_ca_server_valid_for '+20d'" in run.stdout and "site_ca_server_renew_before_days (30)" in run.stdout
    assert not site.ca.exists(), "something was created before the check"


def test_curve_change_reissues_the_server_certificate_and_keeps_the_ca_key(site):
    site.play()
    ca_key = (site.ca / "ca.key").read_bytes()
    ca_crt = (site.ca / "ca.crt").read_bytes()
    old = site.cert()
    run = site.play("-e", "site_ca_key_curve=secp384r1")
    assert (site.ca / "ca.key").read_bytes() == ca_key and (site.ca / "ca.crt").read_bytes() == ca_crt
    assert "WARNING: site_ca_key_curve is secp384r1 but the existing site CA key" in run.stdout
    new = site.cert()
    assert new.serial_number != old.serial_number and "it does not match its key" in run.stdout
    assert new.public_key().curve.name == "secp384r1"
    assert public_bytes(new) == key_public_bytes(site.server_key)
    assert list((site.ca / "servers").glob("ctl01.key.*~")), "no backup of the replaced server key"
    assert site.changed(site.play("-e", "site_ca_key_curve=secp384r1")) == 0


def test_a_regenerated_server_key_gets_a_new_certificate(site):
    site.play()
    site.server_key.unlink()
    run = site.play()
    assert "it does not match its key" in run.stdout
    assert public_bytes(site.cert()) == key_public_bytes(site.server_key)


def test_a_replaced_ca_key_stops_the_play_before_anything_is_signed(site):
    site.play()
    other = Site(site.dir / "other")
    other.play()
    (site.ca / "ca.key").write_bytes((other.ca / "ca.key").read_bytes())
    site.server_crt.unlink()  # a certificate would be issued now, if the pair were not checked first
    run = site.play(ok=False)
    assert "ca.crt was not made from" in run.stdout
    assert not site.server_crt.exists()


def test_ca_expiry_warns_early_and_fails_when_it_would_outlive_its_ca(site):
    site.play("-e", "site_ca_valid_for=+60d")
    warn = site.play()  # 60 days left, warning window 365 days
    assert "WARNING: the site CA" in warn.stdout and "expires on" in warn.stdout
    fail = site.play("-e", "site_ca_server_renew_before_days=90", "-e", "site_ca_server_valid_for=+120d", ok=False)
    assert "within site_ca_server_renew_before_days (90)" in fail.stdout


@pytest.mark.parametrize("missing", ["site", "secrets"])
def test_site_variables_are_required(site, missing):
    run = site.play(ok=False, **{missing: False})
    name = {"site": "edgefleet_site", "secrets": "edgefleet_secrets_dir"}[missing]
    assert f"{name} is not set for host ctl01 in inventory {site.dir / 'hosts.yml'}" in run.stdout
    assert not site.secrets.exists(), "something was created before the check"


def sans(cert):
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName)) | {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}


@pytest.mark.parametrize("address", ["ctl01.plant.lan", "10.20.0.5", "fd00::5"])
def test_the_server_certificate_covers_the_device_facing_address(site, address):
    site.play(address=address)
    assert {address, "ctl01", "localhost", "127.0.0.1"} <= sans(site.cert())


def test_names_that_leave_out_the_device_facing_address_are_refused_before_anything(site):
    run = site.play("-e", '{"site_ca_server_names": ["ctl01", "localhost"]}', ok=False)
    assert ("The server certificate of ctl01 would not cover edgefleet_controller_address 'ctl01.plant.lan'"
            in run.stdout), run.stdout[-3000:]
    assert "site_ca_server_names ['ctl01', 'localhost']" in run.stdout
    assert not site.secrets.exists(), "something was created before the check"
    # the address in the extra names covers it
    site.play("-e", '{"site_ca_server_names": ["ctl01"], "site_ca_server_extra_names": ["CTL01.plant.lan"]}')
    assert "ctl01.plant.lan" in sans(site.cert())


@pytest.mark.parametrize("address, why", [
    (None, "edgefleet_controller_address is not set for host ctl01"),
    ("ctl01.plant.lan:8883", "is not an IP address (a port does not belong here"),
    ("ctl_01.plant.lan", "contains '_'"),
])
def test_a_missing_or_bad_device_facing_address_is_refused_before_anything(site, address, why):
    run = site.play(ok=False, address=address)
    assert why in run.stdout, run.stdout[-3000:]
    assert "Nothing was changed" in run.stdout
    assert not site.secrets.exists(), "something was created before the check"


def test_a_next_ca_on_request_kept_until_promoted_then_the_server_certificate_is_reissued_from_it(site):
    """A CA rotation's files: site_ca_next=true makes <ca>/next/ (a CA of its
    own and the next listener's certificate, with this host's server key);
    later runs keep it without the flag; after the rotation promotes it
    (rotation.promote_ca, as edgefleet.site.mqtt_rotation does), the next run
    reissues the main server certificate from the new CA."""
    import rotation

    site.play()
    old_ca = site.cert(site.ca / "ca.crt")
    assert not (site.ca / "next").exists()  # never without the request
    site.play("-e", "site_ca_next=true")
    nxt = site.ca / "next"
    next_ca = site.cert(nxt / "ca.crt")
    next_server = site.cert(nxt / "servers" / "ctl01.crt")
    assert public_bytes(next_ca) != public_bytes(old_ca)
    assert next_server.issuer == next_ca.subject and public_bytes(next_server) == key_public_bytes(site.server_key)
    next_ca.public_key().verify(next_server.signature, next_server.tbs_certificate_bytes,
                                __import__("cryptography.hazmat.primitives.asymmetric.ec", fromlist=["ECDSA"]).ECDSA(
                                    next_server.signature_hash_algorithm))
    again = site.play()  # without the flag: kept as it is
    assert site.changed(again) == 0, again.stdout[-3000:]
    assert (nxt / "ca.crt").read_bytes() == next_ca.public_bytes(serialization.Encoding.PEM)
    rotation.promote_ca(str(site.ca), "20260101T000000Z")
    run = site.play()
    assert "another CA signed it" in run.stdout
    assert site.cert(site.ca / "ca.crt").subject == next_ca.subject
    assert site.cert().issuer == next_ca.subject
    assert not (site.ca / "next").exists()
    assert (site.ca / "previous" / "20260101T000000Z" / "ca.crt").exists()
