import pytest

from simsite import make_site


@pytest.fixture
def site(broker, tmp_path):
    """site(specs, time_scale, initial) -> SimDevices on a broker with the real ACL; site.broker is the broker."""
    return make_site(broker, tmp_path)
