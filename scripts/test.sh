#!/usr/bin/env bash
# README command 2: install everything the tests need (as root on Debian: SIPp, sipsak,
# PostgreSQL, Chromium, softphones), make .venv with the test dependencies, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
command -v sipp >/dev/null || need+=(sip-tester)
command -v sipsak >/dev/null || need+=(sipsak)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v baresip >/dev/null || need+=(baresip-core)
command -v linphonec >/dev/null || need+=(linphone-cli)
command -v openssl >/dev/null || need+=(openssl)   # the lab's CA and node certificates
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v iptables >/dev/null || need+=(iptables)        # the NAT routers of the emergency matrix and the takeover test
command -v arping >/dev/null || need+=(iputils-arping)    # gratuitous ARP of a taken address
command -v chattr >/dev/null || need+=(e2fsprogs)         # a node's database made immutable (tests/test_health.py)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "the tests need these Debian packages; as root: apt install ${need[*]}" >&2
    exit 2
  fi
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
source scripts/venv.sh requirements-dev.txt
# tests/test_upgrade.py and test_hosts_upgrade.py run the previous release, found by its tag: a clone may lack tags.
# A shallow clone without the tag gets the previous release's commit (tests/upgrades.py) fetched.
if [ -n "$(git remote 2>/dev/null)" ]; then
  git fetch --quiet --tags 2>/dev/null || true
  prev=$(sed -n 's/^PREVIOUS_COMMIT = "\([0-9a-f]*\)"/\1/p' tests/upgrades.py)
  if [ -n "$prev" ] && ! git cat-file -e "$prev^{commit}" 2>/dev/null; then
    if [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" = true ]; then
      git fetch --quiet --unshallow 2>/dev/null || true
    fi
    git cat-file -e "$prev^{commit}" 2>/dev/null || git fetch --quiet origin "$prev" 2>/dev/null || true
  fi
fi
status=0
.venv/bin/python -m pytest -q "$@" || status=$?
exit $status
