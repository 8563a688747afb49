import base64

import pytest
from ansible.errors import AnsibleFilterError

import edgefleet


# Produced by Debian 12's mosquitto_passwd 2.0.11:
#   mosquitto_passwd -c -b f psu-test s3cret-Pass
MOSQUITTO_PASSWD_VECTOR = (
    "psu-test",
    "s3cret-Pass",
    "$7$101$YD3YKYL8IUZIveFA$DkpcEbh+6p62Ew7c93ruAry8X/O1DoGhmKHnCfUkfVDbloDi0PS+dbGHLFH3Q6ZqtH1kWs4Kx1yUgGrIZPz2cA==",
)


def test_hash_matches_mosquitto_passwd_output():
    _user, password, expected = MOSQUITTO_PASSWD_VECTOR
    salt = base64.b64decode(expected.split("$")[3])
    assert edgefleet.mosquitto_passwd_hash_with_salt(password, salt, 101) == expected


def test_hash_is_deterministic_per_host_and_user():
    a = edgefleet.mosquitto_passwd_hash("pw", "psu-ktcyat68", "ctl01")
    assert a == edgefleet.mosquitto_passwd_hash("pw", "psu-ktcyat68", "ctl01")
    assert a != edgefleet.mosquitto_passwd_hash("pw", "psu-nn2prnvv", "ctl01"), "salt must differ per user"
    assert a != edgefleet.mosquitto_passwd_hash("pw", "psu-ktcyat68", "ctl02"), "salt must differ per host"
    assert a != edgefleet.mosquitto_passwd_hash("pw2", "psu-ktcyat68", "ctl01")
    prefix, iterations, salt, digest = a.split("$")[1:]
    assert (prefix, iterations) == ("7", "101")
    assert len(base64.b64decode(salt)) == 12 and len(base64.b64decode(digest)) == 64


@pytest.mark.parametrize("password,user,iterations", [
    ("", "u", 101), (None, "u", 101), ("pw", "", 101), ("pw", "a:b", 101), ("pw", "u", 0), ("pw", "u", "many"),
])
def test_hash_rejects_bad_input_with_the_value(password, user, iterations):
    with pytest.raises(AnsibleFilterError) as err:
        edgefleet.mosquitto_passwd_hash(password, user, "host", iterations)
    assert "mosquitto_passwd_hash" in str(err.value)


def test_subject_alt_names():
    assert edgefleet.subject_alt_names(["Ctl01.Factory.lan", "10.20.0.5", "::1", "localhost", "10.20.0.5"]) == [
        "DNS:ctl01.factory.lan", "IP:10.20.0.5", "IP:::1", "DNS:localhost"]


@pytest.mark.parametrize("bad", ["ctl 01", "", "a/b", "..x", "http://x"])
def test_subject_alt_names_rejects_and_names_bad_entries(bad):
    with pytest.raises(AnsibleFilterError) as err:
        edgefleet.subject_alt_names(["ok.lan", bad])
    assert repr(bad) in str(err.value) or repr(bad.strip()) in str(err.value)


def test_subject_alt_names_needs_a_list():
    with pytest.raises(AnsibleFilterError):
        edgefleet.subject_alt_names("ctl.lan")


def test_device_config_max_reads_the_device_contract():
    import devconfig

    assert edgefleet.device_config_max("temperature_zones") == devconfig._RULES["temperature_zones"][2] == 8
    assert edgefleet.device_config_max("publish_interval_s") == devconfig._RULES["publish_interval_s"][2]


def test_device_config_max_refuses_a_setting_without_a_number():
    with pytest.raises(AnsibleFilterError, match="'ntp_server' is not a numeric device setting"):
        edgefleet.device_config_max("ntp_server")
    with pytest.raises(AnsibleFilterError, match="'temperature_zone' is not a numeric device setting"):
        edgefleet.device_config_max("temperature_zone")
