#!/usr/bin/env bash
# The README's test command: installs and starts what the tests need, then runs every check
# and test of the workspace. Safe to run repeatedly; needs root for package installs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Compiled dependencies outlive the clone (CI runs in a fresh clone each time).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/metahook/target}"
mkdir -p "$CARGO_TARGET_DIR"
export CARGO_TERM_COLOR=never RUST_BACKTRACE=1

log() { printf '\n== %s\n' "$*"; }

# apt_install and the tools' cache directory, shared with scripts/install-tools.sh.
# shellcheck source=tools/common.sh
. scripts/tools/common.sh

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_nats() {
  port_open 4222 && return 0
  apt_install nats-server
  if command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ]; then
    local bin; bin=$(command -v nats-server || echo /usr/sbin/nats-server)
    mkdir -p /var/lib/metahook-nats
    "$bin" -a 127.0.0.1 -p 4222 -js -sd /var/lib/metahook-nats >/var/log/metahook-nats.log 2>&1 &
    for _ in $(seq 50); do port_open 4222 && return 0; sleep 0.1; done
  fi
  echo "NATS is not available on 127.0.0.1:4222"
}

ensure_postgres() {
  port_open 5432 && return 0
  apt_install postgresql
  if [ -d /etc/postgresql ]; then
    local version; version=$(ls /etc/postgresql | head -n1)
    # The tests connect as postgres without a password to database `test` on 127.0.0.1,
    # as on the machines where PostgreSQL runs from the start; set that up when we start it.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    if [ -f "$hba" ] && ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
      sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 50); do port_open 5432 && break; sleep 0.2; done
    if port_open 5432; then
      su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname = 'test'\"" | grep -q 1 \
        || su postgres -c "createdb test" || true
      return 0
    fi
  fi
  echo "PostgreSQL is not available on 127.0.0.1:5432"
}

log "services and tools"
bash scripts/install-tools.sh
# The sink credential tests start servers of their own (a nats-server with authentication
# or TLS, a PostgreSQL with ssl = on) from these packages' programs, whatever serves the
# standard ports.
apt_install nats-server postgresql curl
# The Kafka sink's librdkafka is compiled from the rdkafka crate's bundled source (a C
# compiler and make) against OpenSSL; its tests start tansu (scripts/tools/tansu.sh).
apt_install gcc make pkg-config libssl-dev
ensure_nats
ensure_postgres

# The tests that read the shared Meta fixtures fail when the folder is missing, unless
# META_FIXTURES_OPTIONAL=1. A clone without the folder beside it (not this project's
# layout) gets that, loudly, here and again at the end, instead of a failed suite.
fixtures="${META_FIXTURES_DIR:-../shared/fixtures/meta}"
if [ -f "$fixtures/INDEX.tsv" ]; then
  META_FIXTURES_DIR=$(cd "$fixtures" && pwd)
  export META_FIXTURES_DIR
  echo "shared Meta fixtures: $META_FIXTURES_DIR"
else
  export META_FIXTURES_OPTIONAL=1
  echo "WARNING: shared Meta fixtures not found at $fixtures (set META_FIXTURES_DIR):"
  echo "WARNING: the conformance tests over real payloads SKIP in this run"
  trap 'echo "WARNING: the shared Meta fixtures were missing: the conformance tests skipped"' EXIT
fi

log "format"
cargo fmt --all -- --check

log "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "build"
cargo build --workspace --bins --locked

log "images"
# Static release binaries in FROM scratch images (localhost/metahook-*:<version>); the image
# tests run them with podman.
bash scripts/build-images.sh

log "tests"
cargo test --workspace --locked --no-fail-fast
