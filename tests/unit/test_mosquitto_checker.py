"""The candidate-config rewrite of roles/mosquitto/files/mosquitto-check-config.
(The checker itself runs against a real broker in the Molecule scenario.)"""

import pytest
from rolebroker import checker

CONFIG = """
# comment
per_listener_settings false
password_file /etc/mosquitto/edgefleet.passwd
acl_file /etc/mosquitto/edgefleet.acl
pid_file /run/mosquitto/mosquitto.pid
persistence true
persistence_location /var/lib/mosquitto/
log_dest file /var/log/mosquitto/mosquitto.log
listener 1883 10.20.0.5
protocol mqtt
listener 8883 0.0.0.0
certfile /etc/mosquitto/certs/edgefleet-server.crt
"""


def test_rewrite_moves_listeners_persistence_and_maps_paths():
    ports = iter([40001, 40002])
    lines, used = checker.rewrite(
        CONFIG.splitlines(),
        {"/etc/mosquitto/edgefleet.acl": "/stage/edgefleet.acl",
         "/etc/mosquitto/certs/edgefleet-server.crt": "/stage/edgefleet-server.crt"},
        "/tmp/x/persistence", port_source=lambda: next(ports))
    assert used == [40001, 40002]
    assert "listener 40001 127.0.0.1" in lines and "listener 40002 127.0.0.1" in lines
    assert "acl_file /stage/edgefleet.acl" in lines
    assert "certfile /stage/edgefleet-server.crt" in lines
    assert "password_file /etc/mosquitto/edgefleet.passwd" in lines
    assert "persistence_location /tmp/x/persistence/" in lines
    assert not any(line.startswith(("pid_file", "log_dest file", "persistence_location /var")) for line in lines)
    assert not any("1883" in line or "8883" in line for line in lines)


def test_include_dir_is_refused():
    with pytest.raises(ValueError):
        checker.rewrite(["include_dir /etc/mosquitto/conf.d"], {}, "/tmp/p")


def test_missing_config_is_a_usage_error(tmp_path, capsys):
    assert checker.main(["--config", str(tmp_path / "nope.conf")]) == 2
    assert "cannot read" in capsys.readouterr().err
