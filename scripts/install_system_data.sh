#!/usr/bin/env bash
# Installs the real Fashion-MNIST files (Debian package dataset-fashion-mnist) when missing.
set -euo pipefail
if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "dataset-fashion-mnist is not installed; run: sudo apt-get install dataset-fashion-mnist" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
