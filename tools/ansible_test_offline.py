"""Run ansible-test with the sanity tests' Python environments replaced by this one.

ansible-test builds a virtualenv per sanity test and bootstraps pip in it
from a download host; offline that fails before any test runs, whatever the
--local/--venv option. This wrapper makes each sanity test use the Python
that runs it (the project's virtualenv, which pins the sanity tests' own
requirements in requirements.txt: pylint, pycodestyle, voluptuous,
antsibull-docs-parser, yamllint) and otherwise runs ansible-test unchanged.

Weaker than ansible-test's own environments in one way: the import test then
sees every package of the project's virtualenv, not only the minimal set, so
an import of a package that a target host lacks passes here.

usage: python tools/ansible_test_offline.py sanity [ansible-test options]
"""

import sys

from ansible_test._internal.commands import sanity
from ansible_test._internal.host_configs import VirtualPythonConfig


def this_python(args, python, name, coverage=False, minimize=False):  # pylint: disable=unused-argument
    return VirtualPythonConfig(version=python.version, path=sys.executable)


def this_python_yaml(python):  # pylint: disable=unused-argument
    # whether PyYAML has libyaml (ansible-test records it when it builds an environment)
    import yaml  # pylint: disable=import-outside-toplevel
    return hasattr(yaml, "CSafeLoader")


__import__("ansible_test._internal.commands.sanity.import")
IMPORT_TEST = sys.modules["ansible_test._internal.commands.sanity.import"]
# ansible-test's internals (ansible-core 2.19): stop clearly if they moved.
for module, name in ((sanity, "create_sanity_virtualenv"), (sanity, "check_sanity_virtualenv_yaml"),
                     (IMPORT_TEST, "create_sanity_virtualenv"), (IMPORT_TEST, "check_sanity_virtualenv_yaml")):
    if not callable(getattr(module, name, None)):
        sys.exit("tools/ansible_test_offline.py: %s.%s is gone in this ansible-test; adapt the wrapper to it"
                 % (module.__name__, name))
sanity.create_sanity_virtualenv = this_python
sanity.check_sanity_virtualenv_yaml = this_python_yaml
# The import test imported both functions by name.
IMPORT_TEST.create_sanity_virtualenv = this_python
IMPORT_TEST.check_sanity_virtualenv_yaml = this_python_yaml

if __name__ == "__main__":
    from ansible_test._util.target.cli.ansible_test_cli_stub import main
    sys.argv[0] = "ansible-test"
    sys.exit(main())
