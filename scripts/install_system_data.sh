#!/usr/bin/env bash
# Installs the real Fashion-MNIST files (Debian package dataset-fashion-mnist) when missing.
# Where that cannot be done here (no apt, not root, no package index), it says what it skipped
# and how to get the data, and exits 0: the loader then falls back to the Hub dataset
# zalando-datasets/fashion_mnist (online), or to FASHION_MNIST_DIR.
set -euo pipefail
if command -v dpkg >/dev/null 2>&1 && dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    exit 0
fi
skip() {
    echo "install_system_data: skipped installing dataset-fashion-mnist ($1)." >&2
    echo "  Get the data with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or set" >&2
    echo "  FASHION_MNIST_DIR to a folder holding the four *-idx?-ubyte.gz files; without either," >&2
    echo "  the loader reads the Hub dataset zalando-datasets/fashion_mnist (needs the network)." >&2
    exit 0
}
command -v apt-get >/dev/null 2>&1 || skip "no apt-get on this machine"
[ "$(id -u)" = "0" ] || skip "installing Debian packages needs root"
apt-get update -qq || skip "apt-get update failed"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || skip "apt-get install failed"
