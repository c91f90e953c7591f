#!/usr/bin/env bash
# Installs the external tools the test suite drives (helm, kubectl, promtool and prometheus,
# buildah and podman, kubernetes-validate, TypeScript with Grafana's schema, ...) into a cache
# outside the clone, $METAHOOK_TOOLS_DIR (default /var/cache/metahook/tools), so later runs
# on the same machine reuse them. Each file in scripts/tools/ installs one family of tools;
# this script runs them all. Safe to run repeatedly; needs root for Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/common.sh
. scripts/tools/common.sh
for part in scripts/tools/*.sh; do
  [ "$(basename "$part")" = common.sh ] && continue
  echo "-- tools: $(basename "$part" .sh)"
  # shellcheck disable=SC1090
  . "$part"
done
echo "tools in $METAHOOK_TOOLS_DIR/bin: $(ls "$METAHOOK_TOOLS_DIR/bin" 2>/dev/null | tr '\n' ' ')"
