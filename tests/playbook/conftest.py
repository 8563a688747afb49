import pytest

from flashsite import plugged


@pytest.fixture
def peers(request):
    """Two boards (ROM-protocol peers) with the MACS of the test module."""
    yield from plugged(request.module.MACS)
