#!/usr/bin/env bash
# Builds metahook's container images offline with buildah:
#   localhost/metahook-receiver:<version> and localhost/metahook-operator:<version>
# from images/Containerfile (FROM scratch) and static binaries built here by cargo.
#
#   scripts/build-images.sh                      build both
#   scripts/build-images.sh --push PREFIX        ... then push to PREFIX/metahook-{receiver,operator}:<version>
#   scripts/build-images.sh --archive DIR        ... then write DIR/metahook-{receiver,operator}-<version>.tar (OCI archives,
#                                                for `kind load image-archive`, `k3s ctr images import`, `podman load`;
#                                                each holds its image under the same localhost/... name)
#   scripts/build-images.sh --skip-cargo         reuse the static binaries of the last build
#
# Needs buildah (Debian's package; scripts/install-tools.sh installs it). <version> is the
# Cargo workspace version.
set -euo pipefail
cd "$(dirname "$0")/.."

push="" archive="" skip_cargo=""
while [ $# -gt 0 ]; do
  case "$1" in
    --push) push="${2:?--push needs a registry prefix, e.g. registry.example.com/metahook}"; shift 2 ;;
    --archive) archive="${2:?--archive needs a directory}"; shift 2 ;;
    --skip-cargo) skip_cargo=1; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-images.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

command -v buildah >/dev/null || { echo "build-images.sh: buildah is not installed (apt-get install buildah, or scripts/install-tools.sh)" >&2; exit 1; }

version=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml","rb"))["workspace"]["package"]["version"])')
source_url=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml","rb"))["workspace"]["package"]["repository"])')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# The commit's time, not now, so two builds of one commit carry the same labels.
created=$(git show -s --format=%cI HEAD 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/metahook/target}"
host=$(rustc -vV | sed -n 's/^host: //p')
bins="$CARGO_TARGET_DIR/$host/release"
if [ -z "$skip_cargo" ]; then
  # --target keeps build scripts and proc macros dynamic; only the binaries are static.
  # OPENSSL_STATIC: the Kafka sink's librdkafka (built from source, static) uses OpenSSL
  # for TLS and SCRAM; Debian's libssl.a/libcrypto.a are linked in, not libssl.so.
  OPENSSL_STATIC=1 RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target "$host" \
    -p metahook-receiver -p metahook-operator --bin metahook-receiver --bin metahook-operator
fi
for bin in metahook-receiver metahook-operator; do
  [ -x "$bins/$bin" ] || { echo "build-images.sh: $bins/$bin is missing (run without --skip-cargo)" >&2; exit 1; }
  if readelf -d "$bins/$bin" 2>/dev/null | grep -q '(NEEDED)'; then
    echo "build-images.sh: $bin links shared libraries; a FROM scratch image cannot run it:" >&2
    readelf -d "$bins/$bin" | grep '(NEEDED)' >&2
    exit 1
  fi
done

# The build context: binaries, a root filesystem owned by root, and directories 65532 writes.
context="$CARGO_TARGET_DIR/images/context"
rm -rf "$context"
mkdir -p "$context/bin" "$context/rootfs/etc/ssl/certs" "$context/writable/var/lib/metahook" "$context/writable/tmp"
# Without the debug line tables of the release profile (150 MB -> 20 MB); the symbol table
# stays, so a panic's backtrace still names functions.
for bin in metahook-receiver metahook-operator; do
  strip --strip-debug -o "$context/bin/$bin" "$bins/$bin"
done
chmod 1777 "$context/writable/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/var/lib/metahook:/sbin/nologin\n' >"$context/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$context/rootfs/etc/group"
# Roots for sinks that reach HTTPS endpoints through the system store.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$context/rootfs/etc/ssl/certs/"
fi

buildah_() { buildah --storage-driver vfs "$@"; }
for component in receiver operator; do
  image="localhost/metahook-$component:$version"
  echo "== building $image"
  buildah_ bud --isolation chroot --layers=false --quiet \
    -f "$PWD/images/Containerfile" --target "$component" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
    --build-arg "CREATED=$created" --build-arg "SOURCE=$source_url" \
    -t "$image" "$context" >/dev/null
  if [ -n "$push" ]; then
    echo "== pushing $push/metahook-$component:$version"
    buildah_ push "$image" "docker://$push/metahook-$component:$version"
  fi
  if [ -n "$archive" ]; then
    mkdir -p "$archive"
    # Named as built (localhost/...): a name with a host part is one every runtime keeps as it
    # is, so the nodes hold exactly what `--set image.registry=localhost` asks for.
    buildah_ push "$image" "oci-archive:$archive/metahook-$component-$version.tar:$image"
    echo "== wrote $archive/metahook-$component-$version.tar"
  fi
done
buildah_ images --filter "reference=localhost/metahook-*:$version"
