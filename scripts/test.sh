#!/usr/bin/env bash
# The whole test suite: installs what the tests need when it is missing (Debian's mosquitto and
# mosquitto-clients, paho-mqtt 2.x from PyPI), then runs every check.
# Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! python3 -c "import paho.mqtt, sys; sys.exit(0 if paho.mqtt.__version__.startswith('2.') else 1)" 2>/dev/null; then
  echo "== installing paho-mqtt 2.x (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check 'paho-mqtt>=2,<3' \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'paho-mqtt>=2,<3'
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== cargo test"
cargo test --workspace --all-features
