"""A Debian tool a test runs (nginx, ser2net, ...): its path, or the test is
skipped with the reason, except under CI, where a missing tool fails."""

import os
import shutil

import pytest


def require(name, package=None):
    path = shutil.which(name) or ("/usr/sbin/" + name if os.path.exists("/usr/sbin/" + name) else None)
    if path is None:
        msg = "Debian's %s is not installed (apt-get install %s)" % (name, package or name)
        if os.environ.get("CI"):
            pytest.fail(msg + ": CI must install it")
        pytest.skip(msg)
    return path
