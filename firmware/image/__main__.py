"""python -m firmware.image --inventory inventories/lab --device psu-ktcyat68 --micropython firmware.bin --out images/

Builds one board's merged flash image (write it at offset 0) and prints its
sha256. device.json gets the device's password (<secrets>/mqtt/<id>), and the
site's OTA signing public key (<secrets>/signing/current.pub; never the
private key). The MicroPython ESP32 firmware.bin is the operator's: it cannot
be downloaded here.

    python -m firmware.image --freeze-manifest build/edgefleet-frozen

writes a MicroPython freeze manifest of the app (and the modules beside it)
instead, for a firmware with the app frozen in; an image for such a firmware
is then built with --frozen-app."""

import argparse
import json
import os
import sys

from firmware import common

from . import BuildError, app_version, build_image


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m firmware.image", description=__doc__.split("\n\n")[0])
    p.add_argument("--inventory", default="inventories/lab")
    p.add_argument("--device", help="device id (inventory host name)")
    p.add_argument("--micropython", help="MicroPython ESP32 firmware.bin (supplied by you)")
    p.add_argument("--frozen-app", action="store_true",
                   help="--micropython has the app frozen in (built from --freeze-manifest): the filesystem gets only "
                        "main.py and the device's files, no compiled modules")
    p.add_argument("--freeze-manifest", metavar="DIR",
                   help="instead of an image: write DIR/manifest.py and the app's modules beside it, for MicroPython's "
                        "FROZEN_MANIFEST (ESP32: make BOARD=ESP32_GENERIC FROZEN_MANIFEST=DIR/manifest.py, with "
                        "--port-manifest '$(PORT_DIR)/boards/manifest.py')")
    p.add_argument("--port-manifest", help="with --freeze-manifest: a manifest to include first (the port's own)")
    p.add_argument("--secrets", help="secrets directory (default: secrets/<site>)")
    p.add_argument("--wifi-ssid")
    p.add_argument("--wifi-password", default="")
    p.add_argument("--plain", action="store_true",
                   help="devices connect without TLS, to edgefleet_broker_port (default: TLS to edgefleet_broker_tls_port,"
                        " trusting the site CA); only for sites that opted their plain listener into the LAN")
    p.add_argument("--version", help="app version written into slot a (default: the app's FW_VERSION)")
    p.add_argument("--out", default="images")
    args = p.parse_args(argv)
    if args.freeze_manifest:
        from . import freeze_manifest

        print(freeze_manifest(args.freeze_manifest, args.port_manifest))
        return 0
    if not args.device or not args.micropython:
        p.error("--device and --micropython are required (or --freeze-manifest)")

    specs, site_vars = common.inventory_devices(args.inventory)
    match = [s for s in specs if s[0] == args.device]
    if not match:
        p.error("device %s is not in inventory %s" % (args.device, args.inventory))
    device_id, kind, mac = match[0]
    site = site_vars.get("edgefleet_site")
    if not site:
        p.error("edgefleet_site is not set in inventory %s (group_vars/all): it names the site in every topic"
                % args.inventory)
    tls = not args.plain
    secrets = args.secrets or os.path.join("secrets", site)
    signing_pub = os.path.join(secrets, "signing", "current.pub")
    if not os.path.exists(signing_pub):
        p.error("%s does not exist: the site's OTA signing key is made once by the ota_signing role (site.yml or "
                "playbooks/flash.yml run it); every board gets its public key" % signing_pub)
    try:
        with open(signing_pub) as f:
            signing_key = f.read().strip()
        with open(os.path.join(secrets, "mqtt", device_id)) as f:
            password = f.read().strip()
        with open(args.micropython, "rb") as f:
            base = f.read()
        ca = None
        if tls:
            with open(os.path.join(secrets, "ca", "ca.crt"), "rb") as f:
                ca = f.read()
    except OSError as e:
        p.error(str(e))
    # what the board dials: the site's device-facing address
    broker = {"host": site_vars.get("edgefleet_controller_address") or site_vars.get("edgefleet_broker_host"),
              "port": int(site_vars.get("edgefleet_broker_tls_port", 8883) if tls
                          else site_vars.get("edgefleet_broker_port", 1883)),
              "tls": tls}
    if ca:
        broker["ca"] = "ca.crt"
    device = {"id": device_id, "kind": kind, "site": site, "broker": broker, "password": password,
              "signing_key": signing_key, "config": common.kind_config(kind, mac)}
    wifi = {"ssid": args.wifi_ssid, "password": args.wifi_password} if args.wifi_ssid else None
    try:
        if args.version is None:
            args.version = app_version()
        image, report = build_image(base, device, ca, wifi, args.version, frozen_app=args.frozen_app)
    except BuildError as e:
        p.error(str(e))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, device_id + ".bin")
    with open(path, "wb") as f:
        f.write(image)
    with open(path + ".json", "w") as f:
        json.dump(dict(report, device=device_id, mac=mac), f, indent=1)
    print("%s %s (%d bytes, MAC %s)" % (report["sha256"], path, report["size"], mac))
    return 0


if __name__ == "__main__":
    sys.exit(main())
