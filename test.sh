#!/usr/bin/env bash
# Runs every test. Installs what the tests need from Debian's packages when it is missing
# (PostgreSQL 15 for the participant kit's stores; each test starts its own cluster on a free
# loopback port and stops it afterwards; chromium for the dashboard's browser tests, driven by
# Playwright, which never downloads a browser of its own; rabbitmq-server for the RabbitMQ
# transport's tests, which start their own node on free loopback ports), then runs `dotnet test`.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

dotnet test Treaty.sln "$@"
