"""Render the mosquitto role's real templates (ACL and mosquitto.conf) for a
test broker, with the role's own defaults and internal vars (plain Jinja2:
these templates use no Ansible-only filters)."""

import pathlib

import jinja2
import yaml

ROLE = pathlib.Path(__file__).resolve().parents[2] / "roles" / "mosquitto"


_STRICT = jinja2.Environment(undefined=jinja2.StrictUndefined)


def _render(value, context):
    if isinstance(value, str) and "{{" in value:
        return _STRICT.from_string(value).render(**context)
    if isinstance(value, list):
        return [_render(v, context) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, context) for k, v in value.items()}
    return value


def role_context(site, devices, overrides=None):
    """The role's defaults and internal vars as the templates see them: every
    default whose value needs no Ansible (site, limits, listeners, paths),
    with *overrides* ({var: value}) applied like inventory vars."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    internal = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    context = {"mosquitto_site": site, "ansible_managed": "test", "_mosquitto_devices": sorted(devices)}
    for key, value in {**defaults, **internal}.items():
        if key in context:
            continue
        try:
            context[key] = _render(value, context)
        except jinja2.UndefinedError:
            continue  # needs Ansible (secrets dir, site_ca facts): not used by these templates
    context.update(overrides or {})
    return context


def _env():
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROLE / "templates")), trim_blocks=True)


def render_acl(site, devices):
    return _env().get_template("edgefleet.acl.j2").render(**role_context(site, devices))


def render_conf(site, devices, overrides=None):
    """The role's mosquitto.conf, exactly as the role renders it for these vars."""
    return _env().get_template("mosquitto.conf.j2").render(**role_context(site, devices, overrides))
