"""Check a ser2net 4.3 config written by roles/flash_station before it
replaces the live /etc/ser2net.yaml.

    python3 ser2net_check.py FILE

ser2net has no check-only mode: it serves whatever connections of a config it
can read and only logs the others, and on SIGHUP a broken config silently
drops listeners. So this checks the file the role wrote, with PyYAML (in the
flash station's virtualenv, an esptool dependency):

- one YAML document whose top level holds only `connection` entries (ser2net
  repeats that key, so the file is read node by node, not as a dict);
- each connection named by its anchor (1+ of a-z 0-9 _ -, unique), with an
  `accepter` of the form telnet(rfc2217),tcp,<IPv4 address>,<port> (ports
  1-65535, unique) and a `connector` of the form
  serialdev,<device>,<speed><parity><bits><stop>[,local] whose device is
  unique and ends with the connection's name;
- no other keys than accepter, connector and options.

Prints each problem on stderr and exits 1, or exits 0 with no output.
"""

import ipaddress
import re
import sys

import yaml

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
ACCEPTER = re.compile(r"^telnet\(rfc2217\),tcp,(?P<host>[0-9.]+),(?P<port>[0-9]{1,5})$")
CONNECTOR = re.compile(r"^serialdev,(?P<dev>/[A-Za-z0-9._/-]+),(?P<serial>[0-9]{3,7}[neo][5-8][12])(,local)?$")
KEYS = {"accepter", "connector", "options"}


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps each node's anchor (ser2net's connection name)."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        anchor = None if isinstance(event, yaml.AliasEvent) else getattr(event, "anchor", None)
        node = super().compose_node(parent, index)
        if anchor is not None:
            node.ser2net_anchor = anchor
        return node


def _plain(node):
    """A node as plain Python (str, list, dict), anchors resolved already."""
    if isinstance(node, yaml.ScalarNode):
        return node.value
    if isinstance(node, yaml.SequenceNode):
        return [_plain(n) for n in node.value]
    return {_plain(k): _plain(v) for k, v in node.value}


def check(text):
    """The problems of a ser2net config text, as a list of strings (empty: fine)."""
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        return ["not a single YAML document: %s" % str(e).replace("\n", " ")]
    if not isinstance(root, yaml.MappingNode):
        return ["the top level must be a mapping of connection entries"]
    problems, names, ports, devices = [], set(), set(), set()
    for key, value in root.value:
        line = key.start_mark.line + 1
        where = "line %d" % line
        if not isinstance(key, yaml.ScalarNode) or key.value != "connection":
            problems.append("%s: unexpected top-level entry %r (only connection entries belong here)"
                            % (where, _plain(key)))
            continue
        name = getattr(value, "ser2net_anchor", None)
        if name is None or not NAME.match(name):
            problems.append("%s: a connection needs a name (&name, 1+ of a-z 0-9 _ -), got %r" % (where, name))
            name = "?"
        elif name in names:
            problems.append("%s: connection name %s is used twice" % (where, name))
        names.add(name)
        where = "line %d (connection %s)" % (line, name)
        if not isinstance(value, yaml.MappingNode):
            problems.append("%s: must be a mapping of accepter and connector" % where)
            continue
        conn = _plain(value)
        unknown = sorted(set(conn) - KEYS)
        if unknown:
            problems.append("%s: unknown keys %s (allowed: %s)" % (where, ", ".join(unknown), ", ".join(sorted(KEYS))))
        if "options" in conn and not isinstance(conn["options"], dict):
            problems.append("%s: options must be a mapping" % where)
        accepter = conn.get("accepter")
        m = ACCEPTER.match(accepter) if isinstance(accepter, str) else None
        if not m:
            problems.append("%s: accepter %r is not telnet(rfc2217),tcp,<IPv4 address>,<port>" % (where, accepter))
        else:
            try:
                ipaddress.IPv4Address(m.group("host"))
            except ValueError:
                problems.append("%s: accepter address %s is not an IPv4 address" % (where, m.group("host")))
            port = int(m.group("port"))
            if not 0 < port < 65536:
                problems.append("%s: TCP port %d is not in 1-65535" % (where, port))
            elif port in ports:
                problems.append("%s: TCP port %d is used by another connection" % (where, port))
            ports.add(port)
        connector = conn.get("connector")
        m = CONNECTOR.match(connector) if isinstance(connector, str) else None
        if not m:
            problems.append("%s: connector %r is not serialdev,<device>,<speed><parity><bits><stop>[,local]"
                            % (where, connector))
        else:
            dev = m.group("dev")
            if dev.rsplit("/", 1)[-1] != name:
                problems.append("%s: device %s is not the stable device of port %s" % (where, dev, name))
            if dev in devices:
                problems.append("%s: device %s is served by another connection" % (where, dev))
            devices.add(dev)
    if not names:
        problems.append("no connection entries: ser2net would serve nothing")
    return problems


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: %s FILE\n" % argv[0])
        return 2
    try:
        with open(argv[1], encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        sys.stderr.write("%s: %s\n" % (argv[1], e))
        return 1
    problems = check(text)
    for p in problems:
        sys.stderr.write("%s: %s\n" % (argv[1], p))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
