"""Every role default is declared in meta/argument_specs.yml with the same
default value, and every declared option of the main entry point that has a
default exists in defaults/main.yml."""

import pathlib

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROLES = sorted(p.parent.parent for p in (ROOT / "roles").glob("*/defaults/main.yml"))


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_defaults_and_argument_specs_agree(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    options = specs["main"]["options"]
    missing = sorted(set(defaults) - set(options))
    assert not missing, f"{role.name}: defaults not in argument_specs: {missing}"
    for name, value in defaults.items():
        assert "default" in options[name], f"{role.name}: {name} has no default in argument_specs"
        assert options[name]["default"] == value, f"{role.name}: default of {name} differs"
        assert options[name].get("description"), f"{role.name}: {name} has no description"
    extra = sorted(n for n, o in options.items() if "default" in o and n not in defaults)
    assert not extra, f"{role.name}: argument_specs defaults with no defaults/main.yml entry: {extra}"


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_public_variables_are_role_prefixed(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    bad = [n for n in defaults if not n.startswith(role.name + "_")]
    assert not bad, f"{role.name}: defaults without the '{role.name}_' prefix: {bad}"
