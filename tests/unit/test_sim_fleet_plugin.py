"""The sim_fleet inventory plugin's MAC generation and its errors."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("sim_fleet", ROOT / "plugins" / "inventory" / "sim_fleet.py")
sim_fleet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sim_fleet)


def test_macs_count_up_after_the_prefix():
    assert sim_fleet.fleet_macs("24:0a:c4:01", 3) == ["24:0a:c4:01:00:01", "24:0a:c4:01:00:02", "24:0a:c4:01:00:03"]
    assert len(set(sim_fleet.fleet_macs("24:0a:c4", 5000))) == 5000


@pytest.mark.parametrize("prefix,count,reason", [
    ("24:0a", 1, "3 or 4 hex bytes"), ("24:0a:zz", 1, "not hexadecimal"), ("24:0a:c4:01", 70000, "does not fit"),
    ("24:0a:c4:01", 0, "does not fit"),
])
def test_bad_parameters_name_the_value(prefix, count, reason):
    with pytest.raises(ValueError, match=reason):
        sim_fleet.fleet_macs(prefix, count)
