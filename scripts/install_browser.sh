#!/usr/bin/env bash
# Headless Chromium for the MLflow UI test (tests/tracking/test_mlflow_ui.py): Debian packages, idempotent.
set -euo pipefail
PACKAGES=(chromium chromium-driver)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
    echo "already installed: ${PACKAGES[*]} ($(chromium --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi
[[ $(id -u) -eq 0 ]] || { echo "install_browser.sh: run as root to apt-get ${missing[*]}" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
chromium --version
