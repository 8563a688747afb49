"""Item 8's other live checks on the converged controller: InfluxDB's
database, retention policy, users and grants (asked of the real influxd);
the OTA server's images against its manifest, over HTTP and over HTTPS
verified with the site CA; and the live checks of Telegraf and Grafana,
which run where their vendor packages could be installed and are SKIPPED
with the reason where they could not (this machine: no vendor repository,
no cached .deb). docs/checks.md lists which checks ran where."""

import hashlib
import json
import shlex
import ssl
import time
import urllib.parse
import urllib.request

import pytest
from conftest import OTA_PORT, OTAS_PORT, SITE, ephemeral, mqtt

testinfra_hosts = ["ansible://controller"]
DATABASE = "edgefleet"
DASHBOARD_UIDS = ("edgefleet-fleet", "edgefleet-device", "edgefleet-broker", "edgefleet-ota")


def influx(host, secrets_dir, query, user="admin", database=None):
    """InfluxQL through Debian's influx CLI inside the controller: (rc, rows or error text)."""
    password = (secrets_dir / "influxdb" / user).read_text().split()[0]
    argv = ["influx", "-username", user, "-password", password, "-format", "json", "-execute", query]
    if database:
        argv += ["-database", database]
    out = host.run(" ".join(shlex.quote(a) for a in argv))
    if out.rc != 0 or not out.stdout.strip():
        return out.rc or 1, (out.stdout + out.stderr).strip()
    result = json.loads(out.stdout)["results"][0]
    if "error" in result:
        return 1, result["error"]
    series = result.get("series", [{}])[0]
    return 0, [dict(zip(series.get("columns", []), v)) for v in series.get("values", [])]


# --- InfluxDB (Debian 1.x here) ------------------------------------------------

def test_influxdb_has_the_database_and_its_retention(host, secrets_dir):
    rc, rows = influx(host, secrets_dir, "SHOW DATABASES")
    assert rc == 0, rows
    assert DATABASE in [r["name"] for r in rows]
    rc, rows = influx(host, secrets_dir, f"SHOW RETENTION POLICIES ON {DATABASE}")
    assert rc == 0, rows
    history = {r["name"]: r for r in rows}["history"]
    assert history["duration"] == "720h0m0s" and history["default"] is True, rows


def test_influxdb_users_and_their_grants(host, secrets_dir):
    rc, rows = influx(host, secrets_dir, "SHOW USERS")
    assert rc == 0, rows
    assert {r["user"]: r["admin"] for r in rows} == {"admin": True, "telegraf": False, "grafana": False}
    for user, privilege in (("telegraf", "WRITE"), ("grafana", "READ")):
        rc, rows = influx(host, secrets_dir, f"SHOW GRANTS FOR {user}")
        assert rc == 0, rows
        assert rows == [{"database": DATABASE, "privilege": privilege}], (user, rows)


def test_influxdb_enforces_authentication_and_grants(host, secrets_dir):
    # anonymous: refused (auth is on); the read-only user cannot write
    out = host.run("influx -format json -execute 'SHOW DATABASES'")
    assert "authorization" in (out.stdout + out.stderr).lower() or out.rc != 0, out.stdout + out.stderr
    rc, error = influx(host, secrets_dir, f"CREATE DATABASE forbidden_{int(time.time())}", user="grafana")
    assert rc != 0 and "requires admin privilege" in str(error), error


# --- the OTA server --------------------------------------------------------------

def fetch(url, context=None):
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return response.status, response.headers, response.read()


def site_ca_context(secrets_dir):
    ctx = ssl.create_default_context(cafile=str(secrets_dir / "ca" / "ca.crt"))
    return ctx


def local(url, scheme, port):
    """The manifest's URL (http://<controller>:8080/...) through the port published on 127.0.0.1."""
    path = urllib.parse.urlsplit(url).path
    return f"{scheme}://{'localhost' if scheme == 'https' else '127.0.0.1'}:{port}{path}"


@pytest.fixture(scope="module")
def manifest(secrets_dir):
    status, headers, body = fetch(f"https://localhost:{OTAS_PORT}/manifest.json", site_ca_context(secrets_dir))
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    return json.loads(body)


def test_manifest_names_the_image_signed_by_the_site_key(manifest, secrets_dir):
    import otasign

    assert manifest["manifest_version"] == 1 and manifest["site"] == SITE
    [image] = manifest["images"]
    source = (ephemeral() / "ota" / "app-1.2.0.bin").read_bytes()
    assert (image["payload"], image["version"], image["name"]) == ("app", "1.2.0", "app-1.2.0.bin")
    assert image["size"] == len(source) and image["sha256"] == hashlib.sha256(source).hexdigest()
    assert image["url"] == f'{manifest["base_url"]}/app/1.2.0/app-1.2.0.bin'
    assert manifest["base_url"].startswith("http://")  # devices download over plain HTTP
    # by the site's device-facing address (edgefleet_controller_address), not the inventory name
    assert manifest["base_url"] == "http://ctl01.molecule.plant:8080"
    public = otasign.current_public_key(str(secrets_dir / "signing"))
    assert manifest["signing_key"] == public
    assert otasign.verify_entry(public, "app", "1.2.0", len(source), hashlib.sha256(source).hexdigest(),
                                image["security_version"], image["signature"])


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_served_image_matches_its_manifest(manifest, secrets_dir, scheme):
    """What a device downloads has the manifest's size and sha256, over HTTPS
    verified against the site CA, and over the opted-in plain HTTP listener."""
    port, context = (OTAS_PORT, site_ca_context(secrets_dir)) if scheme == "https" else (OTA_PORT, None)
    for image in manifest["images"]:
        status, _, body = fetch(local(image["url"], scheme, port), context)
        assert status == 200
        assert len(body) == image["size"] and hashlib.sha256(body).hexdigest() == image["sha256"], image


def test_https_is_refused_without_the_site_ca():
    with pytest.raises(urllib.error.URLError) as e:
        fetch(f"https://localhost:{OTAS_PORT}/manifest.json", ssl.create_default_context())
    assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)


# --- Telegraf and Grafana: live where their packages could be installed -----------

def installed(host, package):
    return host.run(f"dpkg-query --show --showformat='${{db:Status-Status}}' {package}").stdout.strip() == "installed"


def skip_unless_installed(host, package, role):
    if not installed(host, package):
        pytest.skip(f"{package} is not installed on the controller: its vendor repository is unreachable and no "
                    f".deb is in the artifact cache, so the {role} role rendered and checked its config and skipped "
                    f"the package (docs/checks.md)")


def test_telegraf_writes_telemetry_into_influxdb(host, secrets_dir, password):
    """Within 5 s (the seed's sensor-to-database goal) a state message is a point in InfluxDB."""
    skip_unless_installed(host, "telegraf", "telegraf")
    assert host.service("telegraf").is_running
    device = "fan-edez6pps"
    seq = int(time.time())
    client = mqtt(device, password(device))
    try:
        client.publish(f"site/{SITE}/fan/{device}/state", json.dumps(
            {"device_id": device, "ts": int(time.time()), "seq": seq,
             "electrical": {"voltage": {"a": 230.5}}, "thermal": {"temperature_zones": [40.5, 41.0]}}), qos=1)
    finally:
        client.close()
    deadline = time.monotonic() + 5
    rows = []
    while time.monotonic() < deadline and not rows:
        rc, rows = influx(host, secrets_dir, f"SELECT * FROM telemetry WHERE device_id='{device}' AND seq={seq}",
                          database=DATABASE)
        assert rc == 0, rows
        time.sleep(0.2)
    assert rows, f"seq {seq} of {device} is not in InfluxDB after 5 s"
    assert rows[0]["site"] == SITE and rows[0]["kind"] == "fan"


def grafana_api(host, password, path):
    """GET on Grafana's API inside the controller (its listener is loopback there), with python3: no curl."""
    script = ("import base64,sys,urllib.request as u;r=u.Request(sys.argv[1]);"
              "r.add_header('Authorization','Basic '+base64.b64encode(sys.argv[2].encode()).decode());"
              "sys.stdout.write(u.urlopen(r,timeout=10).read().decode())")
    out = host.run(" ".join(shlex.quote(a) for a in ["python3", "-c", script, f"http://127.0.0.1:3000{path}",
                                                      f"admin:{password}"]))
    assert out.rc == 0, (path, out.stderr)
    return json.loads(out.stdout)


def test_grafana_serves_the_provisioned_dashboards(host, secrets_dir):
    skip_unless_installed(host, "grafana", "grafana")
    assert host.service("grafana-server").is_running
    password = (secrets_dir / "grafana" / "admin").read_text().split()[0]
    for uid in DASHBOARD_UIDS:
        assert grafana_api(host, password, f"/api/dashboards/uid/{uid}")["dashboard"]["uid"] == uid
    assert {d["uid"] for d in grafana_api(host, password, "/api/datasources")} == {
        "edgefleet-prometheus", "edgefleet-influxdb"}


def test_chrony_serves_time_in_the_container_without_setting_its_clock(host):
    """roles/chrony in a container: detected from the facts, chronyd runs
    with -x (the unit's CAP_SYS_TIME condition cleared by the role's
    drop-in), serves its time and writes its state for the node exporter."""
    assert host.service("chrony").is_running
    assert 'DAEMON_OPTS="-F 1 -x"' in host.file("/etc/default/chrony").content_string
    tracking = host.run("chronyc -n -c tracking")
    assert tracking.rc == 0 and tracking.stdout.strip().split(",")[-1] != "Not synchronised", tracking.stdout
    state = host.file("/var/lib/prometheus/node-exporter/edgefleet_chrony.prom")
    assert state.exists and "edgefleet_chrony_up 1" in state.content_string
