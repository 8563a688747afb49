"""The device-facing address checks (plugins/module_utils/siteaddr.py)."""

import pytest

from ansible_collections.edgefleet.site.plugins.module_utils import siteaddr


@pytest.mark.parametrize("value", ["ctl01.factory.lan", "CTL01.Factory.LAN", "ctl01", "10.20.0.5", "fd00::5",
                                   "a" * 63 + ".lan", "x-1.plant"])
def test_good_addresses(value):
    assert siteaddr.address_problem(value) is None


@pytest.mark.parametrize("value, why", [
    ("", "is not a host name"),
    (None, "is not a host name"),
    (5, "is not a host name"),
    (" ctl01", "white space"),
    ("ctl01.lan:8883", "a port does not belong here"),
    ("http://ctl01", "a port does not belong here"),
    ("ctl01..lan", "empty label"),
    ("ctl01.lan.", "empty label"),
    ("ctl_01.lan", "contains '_'"),
    ("-ctl.lan", "starts or ends with '-'"),
    ("a" * 64 + ".lan", "longer than 63"),
    ("a." * 127 + "lan", "longer than 253"),
    ("10.20.0.256", "looks like an IP address"),
])
def test_bad_addresses_are_named_with_the_reason(value, why):
    problem = siteaddr.address_problem(value)
    assert problem and why in problem and repr(value) in problem


def test_names_cover_an_address_by_dns_name_or_ip():
    assert siteaddr.covers(["ctl01", "CTL01.Plant.lan"], "ctl01.plant.LAN")
    assert siteaddr.covers(["fd00:0::5"], "fd00::5")
    assert siteaddr.covers(["10.20.0.5"], "10.20.0.5")
    assert not siteaddr.covers(["ctl01", "localhost", "127.0.0.1"], "ctl01.plant.lan")
    assert not siteaddr.covers(["10.20.0.5"], "10.20.0.6")
    assert not siteaddr.covers(["*.plant.lan"], "ctl01.plant.lan")  # the site CA issues no wildcards
    assert not siteaddr.covers([None, "", " "], "ctl01")
