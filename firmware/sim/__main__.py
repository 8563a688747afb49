"""python -m firmware.sim --inventory inventories/lab --count 200 [--duration 60]

Runs the inventory's devices (the first --count of them) as simulated ESP32
boards with the firmware app, against the site broker, with the per-device
credentials that the mosquitto role generated and the site's OTA signing
public key (<secrets>/signing/current.pub), as a flash station writes them. Stops on Ctrl-C or after
--duration seconds; each device then marks itself offline and disconnects.
"""

import argparse
import asyncio
import logging
import os
import signal
import sys

from firmware import common

from . import fleet


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m firmware.sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--inventory", default="inventories/lab", help="site inventory (default: inventories/lab)")
    p.add_argument("--devices", help="a device list written by Ansible (JSON, see fleet.devices_file) instead of "
                   "--inventory: for runners without ansible-inventory; it may give each device a /metrics port")
    p.add_argument("--flash", action="append", metavar="DUMP=MAC",
                   help="boot a board from a dump of its whole flash (partition table, filesystem, device.json with "
                   "its identity, broker and credentials, as the flash station wrote them) and its MAC; repeatable. "
                   "What the app writes goes back into the dump when the simulator stops. "
                   "Instead of --inventory and --devices")
    p.add_argument("--count", type=int, help="run only the first N devices of the inventory")
    p.add_argument("--generated", action="store_true",
                   help="only the devices the sim_fleet inventory plugin generated, not the named ones (which "
                   "`make lab` already runs)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--broker-host", help="default: edgefleet_broker_host of the inventory")
    p.add_argument("--broker-port", type=int, help="default: edgefleet_broker_port of the inventory")
    p.add_argument("--tls", action="store_true", help="connect with TLS (edgefleet_broker_tls_port), trusting the site CA")
    p.add_argument("--plant", action="store_true",
                   help="run as boards on a plant network: /metrics on every interface, this host's plant address "
                   "as each device's IP, clocks unset until NTP answers, and mDNS: each device answers <id>.local "
                   "and announces its /metrics over DNS-SD (needs python3-zeroconf)")
    p.add_argument("--secrets", help="secrets directory (default: secrets/<site>)")
    p.add_argument("--state-dir", default=".sim", help="where each device's flash filesystem lives")
    p.add_argument("--time-scale", type=float, default=1.0, help="0.1 runs device timers 10x faster")
    p.add_argument("--fault-offline", type=float, default=0.0, help="outages per device per minute")
    p.add_argument("--fault-malformed", type=float, default=0.0, help="fraction of messages sent malformed")
    p.add_argument("--fault-ota-corrupt", type=float, default=0.0,
                   help="fraction of devices whose OTA downloads arrive corrupted (the update fails)")
    p.add_argument("--fault-ota-hang", type=float, default=0.0, help="fraction of devices whose OTA downloads stall")
    p.add_argument("--fault-selftest", type=float, default=0.0,
                   help="fraction of devices whose updated firmware fails its self-test (and rolls back)")
    p.add_argument("--seed", type=int, default=1, help="seed for choosing the faulty devices")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s")

    if args.flash:
        return run_devices(args, flashed_devices(p, args))
    try:
        if args.devices:
            specs, site_vars = fleet.devices_file(args.devices)
        else:
            specs, site_vars = common.inventory_devices(args.inventory, generated_only=args.generated)
            specs = [(device_id, kind, mac, None) for device_id, kind, mac in specs]
    except Exception as e:
        p.error("cannot read %s: %s" % (args.devices or "inventory " + args.inventory, e))
    if args.count is not None:
        if args.count > len(specs):
            p.error("--count %d: the inventory %s has only %d devices" % (args.count, args.inventory, len(specs)))
        specs = specs[:args.count]
    site = site_vars.get("edgefleet_site", "lab")
    secrets = args.secrets or os.path.join("secrets", site)
    host = args.broker_host or site_vars.get("edgefleet_broker_host", "127.0.0.1")
    if args.tls:
        port = args.broker_port or int(site_vars.get("edgefleet_broker_tls_port", 8883))
        ca = os.path.join(secrets, "ca", "ca.crt")
    else:
        port = args.broker_port or int(site_vars.get("edgefleet_broker_port", 1883))
        ca = None
    broker = {"host": host, "port": port, "tls": args.tls}
    signing_pub = os.path.join(secrets, "signing", "current.pub")
    if not os.path.exists(signing_pub):
        p.error("no OTA signing key in %s: run site.yml against this inventory first (the ota_signing role makes "
                "it; every device gets its public key)" % signing_pub)
    with open(signing_pub) as f:
        signing_key = f.read().strip()
    devices = []
    for device_id, kind, mac, metrics_port in specs:
        pw_file = os.path.join(secrets, "mqtt", device_id)
        if not os.path.exists(pw_file):
            p.error("no password for %s in %s: run site.yml against this inventory first" % (device_id, pw_file))
        with open(pw_file) as f:
            password = f.read().strip()
        try:
            root = fleet.provision(args.state_dir, device_id, kind, mac, site, broker, password, ca,
                                   common.kind_config(kind, mac), signing_key=signing_key)
        except ValueError as e:  # contract.ContractError too: a malformed current.pub
            p.error("%s: %s" % (signing_pub, e))
        d = fleet.SimDevice(root, bytes.fromhex(mac.replace(":", "")), kind, time_scale=args.time_scale)
        d.board.faults.malformed = args.fault_malformed
        d.board.metrics_port = metrics_port  # /metrics on 127.0.0.1:<port>, or none
        d.device_id = device_id
        devices.append(d)
    if args.plant:
        return run_plant(args, devices, "%s:%d (%s)" % (host, port, "TLS" if args.tls else "plain"))
    return run_devices(args, devices, "%s:%d (%s)" % (host, port, "TLS" if args.tls else "plain"))


def run_plant(args, devices, where):
    """The fleet as boards on a plant network (see --plant)."""
    from . import mdns

    address = mdns.plant_address()
    responder = mdns.Responder(address)
    try:
        for d in devices:
            d.board.ip_address = address
            d.board.faults.clock_unset = True  # an ESP32 starts in 2000 until NTP answers
            if d.board.metrics_port is not None:
                d.board.metrics_host = "0.0.0.0"
                responder.register(d.device_id, d.board.metrics_port)
        logging.info("plant network address %s; mDNS answers for %d devices",
                     address, sum(1 for d in devices if d.board.metrics_port is not None))
        return run_devices(args, devices, where)
    finally:
        responder.close()


def flashed_devices(p, args):
    import identity
    from firmware.image import BuildError

    devices = []
    for spec in args.flash:
        path, _, mac = spec.rpartition("=")
        try:
            raw = identity.parse_mac(mac)
            with open(path or "", "rb") as f:
                flash = bytearray(f.read())
            root, device_id, kind = fleet.boot_from_flash(args.state_dir, bytes(flash), raw)
        except (OSError, ValueError, BuildError) as e:
            p.error("--flash %s: %s" % (spec, e))
        logging.info("booting %s (MAC %s) from %s", device_id, mac, path)
        device = fleet.SimDevice(root, raw, kind, time_scale=args.time_scale, flash=flash)
        device.flash_path = path  # the board's writes go back into its dump at the end (run_devices)
        devices.append(device)
    return devices


def run_devices(args, devices, where="the brokers in their device.json"):
    fleet.assign_faults(devices, args.seed, ota_corrupt=args.fault_ota_corrupt, ota_hang=args.fault_ota_hang,
                        selftest_fail=args.fault_selftest)
    logging.info("running %d devices against %s", len(devices), where)

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await fleet.run_fleet(devices, duration=args.duration, stop_event=stop, fault_offline=args.fault_offline)

    asyncio.run(run())
    for d in devices:
        if getattr(d, "flash_path", None):
            tmp = d.flash_path + ".new"
            with open(tmp, "wb") as f:
                f.write(d.flash)
            os.replace(tmp, d.flash_path)
    logging.info("stopped: %d messages published", sum(d.device.published for d in devices if d.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
