"""The collection's licence: galaxy.yml names it, LICENSE at the repository
root holds its text, and every plugin file's header names the same licence
(ansible-test sanity checks the GPLv3 header only, which this collection
ignores with a reason: it is not GPL)."""

import pathlib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
GALAXY = ROOT / "collections" / "ansible_collections" / "edgefleet" / "site" / "galaxy.yml"


def test_every_plugin_file_names_galaxy_ymls_licence_and_license_holds_its_text():
    licences = yaml.safe_load(GALAXY.read_text())["license"]
    assert licences == ["Apache-2.0"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text[:200] and "Version 2.0, January 2004" in text[:200]
    assert "END OF TERMS AND CONDITIONS" in text
    files = sorted((ROOT / "plugins").glob("*/*.py"))
    assert len(files) > 20
    missing = [str(f.relative_to(ROOT)) for f in files
               if "# SPDX-License-Identifier: %s\n" % licences[0] not in "".join(f.open().readlines()[:6])]
    assert missing == []
