"""Test-only callback: kill ansible-playbook (SIGKILL, like a controller
that loses power or an operator's laptop that dies) right after the task
named in $EDGEFLEET_INTERRUPT_AFTER has finished on a host, before any later
task or handler runs. Enabled only by the verifier's interrupted converge."""

import os
import signal

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: interrupt
type: aggregate
short_description: kill the play right after a named task (edgefleet tests only)
description:
  - Sends SIGKILL to ansible-playbook when the task named in EDGEFLEET_INTERRUPT_AFTER has finished.
requirements:
  - enabled in ANSIBLE_CALLBACKS_ENABLED
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "interrupt"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.after = os.environ.get("EDGEFLEET_INTERRUPT_AFTER", "")

    def _maybe_kill(self, result):
        if self.after and result._task.get_name() == self.after:
            self._display.display(f"edgefleet test: interrupting the play after '{self.after}'")
            os.kill(os.getpid(), signal.SIGKILL)

    def v2_runner_on_ok(self, result):
        self._maybe_kill(result)
