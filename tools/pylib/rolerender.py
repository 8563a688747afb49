"""Render a role's real templates the way Ansible does (ansible's own Templar,
so Ansible-only filters work), with the role's defaults and internal vars and
inventory-like overrides. For tests that parse or check rendered config with
the real parser or tool on the host.

    ctx = role_vars("prometheus", {"edgefleet_site": "lab"})
    text = render("prometheus", "prometheus.yml.j2", ctx)
"""

import importlib.util
import pathlib

import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _trusted(value):
    # ansible-core 2.19 renders only strings marked as trusted templates (as
    # it marks the role files it loads)
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, list):
        return [_trusted(v) for v in value]
    if isinstance(value, dict):
        return {k: _trusted(v) for k, v in value.items()}
    return value


def _templar(variables):
    return Templar(loader=DataLoader(), variables=_trusted(variables))


def role_vars(role, overrides=None, extra_roles=()):
    """The role's defaults/main.yml and vars/main.yml (and those of
    *extra_roles*, e.g. a role whose facts it reads), with *overrides*
    ({var: value}) on top like inventory vars. Values stay unrendered:
    Ansible renders them lazily, and so does render()."""
    merged = {"ansible_managed": "test", "inventory_hostname": "test-controller", "groups": {}, "hostvars": {}}
    for name in (*extra_roles, role):
        for part in ("defaults", "vars"):
            path = ROOT / "roles" / name / part / "main.yml"
            if path.exists():
                merged.update(yaml.safe_load(path.read_text()) or {})
    merged.update(overrides or {})
    return merged


def template_text(role, template):
    return (ROOT / "roles" / role / "templates" / template).read_text()


def render(role, template, variables):
    """The rendered template, as the template module would write it."""
    templar = _templar(variables)
    return templar.template(trust_as_template(template_text(role, template)))


def value(variables, name):
    """One variable of *variables*, rendered (as a task would see it)."""
    return _templar(variables).template(_trusted(variables[name]))


def load_file(path, name=None):
    """A role's own Python file (a filter plugin, a checker) as a module."""
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
