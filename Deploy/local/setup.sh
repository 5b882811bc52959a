#!/usr/bin/env bash
# Installs what Baton needs on a Debian machine that already has the Swift toolchain: the RabbitMQ server
# (for the local broker node), librabbitmq and SQLite headers, PostgreSQL, Prometheus (its promtool checks
# the example alerting rules), Chromium and Playwright from PyPI (the web console's browser test drives
# Debian's Chromium: Playwright cannot download browsers here). Does nothing when all is present.
set -euo pipefail

# Playwright for Python, unless it is there (PEP 668 systems need the override; a virtualenv's pip does not).
install_playwright() {
    python3 -c 'import playwright.sync_api' 2>/dev/null && return 0
    echo "setup.sh: installing playwright (PyPI)"
    python3 -m pip install -q playwright 2>/dev/null || python3 -m pip install -q --break-system-packages playwright
}

packages=(rabbitmq-server librabbitmq-dev libsqlite3-dev libssl-dev pkg-config openssl iproute2 iptables postgresql prometheus chromium python3-pip)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && { install_playwright; exit 0; }

echo "setup.sh: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# The package's own service is not wanted (the scripts run a private node); policy-rc.d keeps it down.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d > /dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
install_playwright
