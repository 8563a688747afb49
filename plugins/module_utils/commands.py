# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Ansible side: every command the controller sends carries ``expires``
(docs/fleet.md, "Commands"). A device's session is persistent, so the broker
queues a command for a device that is away and delivers it when the device
is back; the expiry is what keeps a command that has gone stale from running
then. The device refuses an expired one on ``cmd/ack`` with reason
``expired`` (contract.CMD_REASONS).
"""

try:
    from ansible_collections.edgefleet.site.plugins.module_utils import contract
except ImportError:  # tests import it from plugins/module_utils directly
    import contract


class CommandError(ValueError):
    pass


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def with_expiry(cmd, now, ttl_s):
    """A copy of the command *cmd* (a dict) with ``expires``: *now* (the
    controller's wall clock, seconds since the epoch) plus *ttl_s* seconds,
    rounded up to a whole second. The result is checked as the device checks
    it (contract.check_command)."""
    if not isinstance(cmd, dict):
        raise CommandError("a command must be a dict, got %s" % type(cmd).__name__)
    if not _is_number(now) or now <= 0:
        raise CommandError("now must be the wall clock in seconds since the epoch, got %r" % (now,))
    if not _is_number(ttl_s) or ttl_s <= 0:
        raise CommandError("the expiry of command %r must be a number of seconds > 0, got %r"
                           % (cmd.get("id"), ttl_s))
    out = dict(cmd)
    expires = now + ttl_s
    out["expires"] = int(expires) + (1 if expires > int(expires) else 0)
    try:
        contract.check_command(out)
    except contract.ContractError as e:
        raise CommandError("command %r: %s" % (cmd.get("id"), e))
    return out
