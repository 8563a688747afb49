"""Filters of the ota_server role: the image list and the OTA manifest.

edgefleet_ota_entries(images, base_url, web_root)
    Check ``ota_server_images`` (a list of {src, version, payload, name?,
    security_version?}) and return one entry per image with where it goes
    on the server: ``dest`` (absolute path under *web_root*), ``path`` (the
    URL path) and ``url`` (*base_url* + path), plus src, payload, version,
    name and security_version (default 0). Raises AnsibleFilterError naming
    the image and the problem.

edgefleet_ota_kept(manifest_text, entries, absent, base_url, web_root)
    The images the server already publishes that stay published: every image
    of the current manifest (*manifest_text*, '' when there is none) that is
    neither listed again in *entries* (the listed one wins) nor named in
    *absent* (``ota_server_images_absent``: a list of {payload, version}).
    Each comes back placed as edgefleet_ota_entries places an image, with
    ``src`` None and the ``size`` and ``sha256`` the manifest signed (the role
    checks the server's bytes against them). An image published once (with
    -e, say) so stays until an operator removes it by name. Raises
    AnsibleFilterError on an unreadable manifest, a malformed absent entry,
    or an image both listed and absent.

edgefleet_ota_manifest(entries, digests, base_url, site, signing_key)
    The manifest's JSON text (deterministic: same images, same bytes, in
    whatever order they come: the manifest lists them by payload, version).
    *digests* is a list parallel to *entries*, each {size, sha256} of the
    bytes the server holds (the role reads them with stat on the target).
    *signing_key* is the path of the site's OTA signing key on the Ansible
    controller (this filter runs there): each image gets ``signature``,
    the key's signature over its payload, version, size, sha256 and
    security_version (contract.ota_signed_message). RFC 6979 signatures
    are deterministic, so the same images give the same manifest on every
    run. The manifest also names the public key (``signing_key``), for
    people; the rollout checks against the site's own public key file.

URL layout: ``<base_url>/<payload>/<version>/<name>``; the manifest is
``<base_url>/manifest.json``. ``base_url`` is plain ``http://``: a device
downloads over plain HTTP (contract.check_ota_command) and trusts the
signature, not the transport. Each image of the manifest carries exactly the
fields an OTA command needs (plugins/module_utils/contract.py ota_command:
payload, version, url, size, sha256, security_version, signature) plus name
and path.
"""

import json
import posixpath
import re

from ansible.errors import AnsibleFilterError

try:
    from ansible_collections.edgefleet.site.plugins.module_utils import contract, otasign
except ImportError:  # tests load this file with plugins/module_utils on sys.path
    import contract
    import otasign

MANIFEST_VERSION = 1
PAYLOADS = contract.OTA_PAYLOADS
# A version and a file name become URL path segments and directory names:
# no '/', no leading dot (no '..', no hidden files), nothing to escape.
# 32 characters is the contract's limit for a version.
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
BASE_URL_RE = re.compile(r"^http://([A-Za-z0-9.-]+)(:[0-9]{1,5})?$")
MAX_URL = 512  # contract: an OTA url has at most 512 characters
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _fail(msg):
    raise AnsibleFilterError("ota_server_images: " + msg)


def edgefleet_ota_entries(images, base_url, web_root):
    if not isinstance(base_url, str) or not BASE_URL_RE.match(base_url):
        raise AnsibleFilterError(
            "ota_server_base_url %r must be http://<host name or IPv4 address>[:port] with no path: devices join "
            "it with /<payload>/<version>/<name> and download over plain HTTP only (the image is signed; a device "
            "keeps its one TLS session for MQTT)" % (base_url,))
    if not isinstance(web_root, str) or not web_root.startswith("/") or web_root.rstrip("/") == "":
        raise AnsibleFilterError("ota_server_web_root %r must be an absolute directory other than /" % (web_root,))
    if images is None:
        images = []
    if not isinstance(images, list):
        _fail("must be a list of {src, version, payload, name?, security_version?}, got %s" % type(images).__name__)
    root = web_root.rstrip("/")
    entries, seen = [], {}
    for i, image in enumerate(images):
        where = "item %d" % i
        if not isinstance(image, dict):
            _fail("%s must be a dict {src, version, payload, name?, security_version?}, got %r" % (where, image))
        unknown = sorted(set(image) - {"src", "version", "payload", "name", "security_version"})
        if unknown:
            _fail("%s has unknown keys %s (allowed: src, version, payload, name, security_version)" % (where, unknown))
        src = image.get("src")
        if not isinstance(src, str) or not src:
            _fail("%s has no src (a file on the Ansible controller)" % where)
        where = "item %d (%s)" % (i, src)
        payload = image.get("payload")
        if payload not in PAYLOADS:
            _fail("%s: payload must be one of %s, got %r" % (where, ", ".join(PAYLOADS), payload))
        version = image.get("version")
        if not isinstance(version, str) or not VERSION_RE.match(version):
            _fail("%s: version must be a string of 1-32 of A-Z a-z 0-9 . _ + - starting with a letter or digit "
                  "(quote numbers in YAML: '1.10' not 1.10), got %r" % (where, version))
        name = image.get("name")
        if name is None:
            name = posixpath.basename(src.rstrip("/"))
        if not isinstance(name, str) or not NAME_RE.match(name):
            _fail("%s: file name must be 1-128 of A-Z a-z 0-9 . _ + - starting with a letter or digit "
                  "(set name: to rename it), got %r" % (where, name))
        security_version = image.get("security_version", 0)
        if (isinstance(security_version, bool) or not isinstance(security_version, int)
                or not 0 <= security_version <= contract.MAX_SECURITY_VERSION):
            _fail("%s: security_version must be an integer 0..%d (devices refuse an image whose security_version "
                  "is below the highest they installed), got %r" % (where, contract.MAX_SECURITY_VERSION,
                                                                      security_version))
        key = (payload, version)
        if key in seen:
            _fail("%s: payload %s version %s is already given by item %d; one image per payload and version"
                  % (where, payload, version, seen[key]))
        seen[key] = i
        path = "/%s/%s/%s" % (payload, version, name)
        url = base_url + path
        if len(url) > MAX_URL:
            _fail("%s: URL %s is longer than %d characters, which devices refuse" % (where, url, MAX_URL))
        entries.append({"src": src, "payload": payload, "version": version, "name": name,
                        "security_version": security_version,
                        "dir": root + "/%s/%s" % (payload, version), "dest": root + path,
                        "path": path, "url": url})
    return entries


def _absent_keys(absent, listed):
    if absent is None:
        absent = []
    if not isinstance(absent, list):
        raise AnsibleFilterError("ota_server_images_absent must be a list of {payload, version}, got %s"
                                 % type(absent).__name__)
    keys = set()
    for i, item in enumerate(absent):
        if (not isinstance(item, dict) or set(item) != {"payload", "version"} or item["payload"] not in PAYLOADS
                or not isinstance(item["version"], str) or not VERSION_RE.match(item["version"])):
            raise AnsibleFilterError("ota_server_images_absent: item %d must be {payload: %s, version: <a version "
                                     "string>}, got %r" % (i, "|".join(PAYLOADS), item))
        key = (item["payload"], item["version"])
        if key in listed:
            raise AnsibleFilterError("ota_server_images_absent: item %d (payload %s version %s) is also listed in "
                                     "ota_server_images: an image is either published or removed" % ((i,) + key))
        keys.add(key)
    return keys


def edgefleet_ota_kept(manifest_text, entries, absent, base_url, web_root):
    listed = {(e["payload"], e["version"]) for e in entries}
    absent_keys = _absent_keys(absent, listed)
    if not manifest_text:
        return []
    where = "the manifest on the server (%s/manifest.json)" % web_root.rstrip("/")
    try:
        old = json.loads(manifest_text)
        images = old["images"]
        if not isinstance(images, list):
            raise TypeError("images is not a list")
    except (ValueError, KeyError, TypeError) as e:
        raise AnsibleFilterError("%s is not a manifest this role wrote (%s): the role cannot tell which images it "
                                 "publishes. Move it away and list every image to publish in ota_server_images."
                                 % (where, e))
    kept, digests = [], []
    for image in images:
        try:
            key = (image["payload"], image["version"])
            size, sha256 = image["size"], image["sha256"]
            item = {"src": "(%s)" % where, "payload": image["payload"], "version": image["version"],
                    "name": image["name"], "security_version": image.get("security_version", 0)}
        except (KeyError, TypeError) as e:
            raise AnsibleFilterError("%s: image %r lacks %s" % (where, image, e))
        if key in listed or key in absent_keys:
            continue
        if (isinstance(size, bool) or not isinstance(size, int) or size <= 0 or not isinstance(sha256, str)
                or not SHA256_RE.match(sha256)):
            raise AnsibleFilterError("%s: image %s %s has size %r and sha256 %r" % ((where,) + key + (size, sha256)))
        kept.append(item)
        digests.append({"size": size, "sha256": sha256})
    placed = edgefleet_ota_entries(kept, base_url, web_root)
    for entry, digest in zip(placed, digests):
        entry.update(digest, src=None)
    return placed


def edgefleet_ota_manifest(entries, digests, base_url, site, signing_key):
    if len(entries) != len(digests):
        raise AnsibleFilterError("edgefleet_ota_manifest: %d entries but %d digests" % (len(entries), len(digests)))
    if not isinstance(signing_key, str) or not signing_key:
        raise AnsibleFilterError("edgefleet_ota_manifest: no signing key (ota_server_signing_key_src is empty: the "
                                 "ota_signing role sets it)")
    try:
        key = otasign.load_private_key(signing_key)
        public_key = otasign.public_key_hex(key)
    except otasign.SigningKeyError as e:
        raise AnsibleFilterError("edgefleet_ota_manifest: %s" % e)
    images = []
    for entry, digest in zip(entries, digests):
        size, sha256 = digest.get("size"), digest.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise AnsibleFilterError("edgefleet_ota_manifest: %s has size %r; an OTA image must not be empty"
                                     % (entry["dest"], size))
        if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
            raise AnsibleFilterError("edgefleet_ota_manifest: %s has no sha256 (got %r)" % (entry["dest"], sha256))
        security_version = entry.get("security_version", 0)
        try:
            signature = otasign.sign_entry(key, entry["payload"], entry["version"], size, sha256, security_version)
        except otasign.SigningKeyError as e:
            raise AnsibleFilterError("edgefleet_ota_manifest: %s: %s" % (entry["dest"], e))
        images.append({"payload": entry["payload"], "version": entry["version"], "name": entry["name"],
                       "path": entry["path"], "url": entry["url"], "size": size, "sha256": sha256,
                       "security_version": security_version, "signature": signature})
    images.sort(key=lambda image: (image["payload"], image["version"]))
    manifest = {"manifest_version": MANIFEST_VERSION, "site": site, "base_url": base_url, "images": images,
                "signing_key": public_key}
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


class FilterModule:
    def filters(self):
        return {
            "edgefleet_ota_entries": edgefleet_ota_entries,
            "edgefleet_ota_kept": edgefleet_ota_kept,
            "edgefleet_ota_manifest": edgefleet_ota_manifest,
        }
