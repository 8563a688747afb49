#!/usr/bin/env bash
# ansible-test sanity on the edgefleet.site collection, offline, in the
# project's virtualenv.
#
# usage: tools/sanity.sh [ansible-test sanity options, e.g. --test pep8]
#
# ansible-test wants the collection at ansible_collections/<ns>/<name> with
# real files: it does not follow the plugins symlink of the in-place
# collection (it then finds nothing to test). So this copies the collection,
# dereferencing symlinks, into a temporary directory and runs there.
# ansible-test would build a virtualenv per test and bootstrap pip into it
# from the network, which is not reachable here: tools/ansible_test_offline.py
# runs it with every test in the project's virtualenv instead (--local:
# no container), which pins the tests' own requirements (requirements.txt).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$EDGEFLEET_ROOT"

src=collections/ansible_collections/edgefleet/site
python_version=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dest=$tmp/ansible_collections/edgefleet/site
mkdir -p "$dest"
cp -rL "$src/." "$dest/"
# galaxy.yml's readme is the repository's README (one level up from a real
# collection); the copy carries its own, and the licence the headers name.
cp README.md LICENSE "$dest/"
sed -i 's|^readme: .*|readme: README.md|' "$dest/galaxy.yml"
find "$dest" -name __pycache__ -prune -exec rm -rf {} +
# ansible-test only tests files that git knows of when the collection is a
# git work tree; the copy is not one, so it tests every file.

skip=(
  # shellcheck is not installed here, and the collection holds no shell scripts.
  --skip-test shellcheck
  # pslint needs PowerShell; the collection holds no PowerShell.
  --skip-test pslint
)
cd "$dest"
PATH="$VENV/bin:$PATH" "$VENV/bin/python" "$EDGEFLEET_ROOT/tools/ansible_test_offline.py" sanity --local --python "$python_version" --color no \
  "${skip[@]}" "$@"
