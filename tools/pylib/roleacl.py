"""Render the mosquitto role's real ACL template for a test broker, with the
role's own defaults and internal vars (plain Jinja2: the template uses no
Ansible-only filters)."""

import pathlib

import jinja2
import yaml

ROLE = pathlib.Path(__file__).resolve().parents[2] / "roles" / "mosquitto"


def _render(value, context):
    if isinstance(value, str) and "{{" in value:
        return jinja2.Template(value).render(**context)
    if isinstance(value, list):
        return [_render(v, context) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, context) for k, v in value.items()}
    return value


def render_acl(site, devices):
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    internal = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    context = {"mosquitto_site": site, "ansible_managed": "test", "_mosquitto_devices": sorted(devices)}
    context["mosquitto_service_users"] = _render(defaults["mosquitto_service_users"], context)
    for key in ("_mosquitto_device_channels_write", "_mosquitto_device_channels_read"):
        context[key] = internal[key]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROLE / "templates")), trim_blocks=True)
    return env.get_template("edgefleet.acl.j2").render(**context)
