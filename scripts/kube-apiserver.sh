#!/usr/bin/env bash
# A real Kubernetes control plane for the end-to-end tests: etcd + kube-apiserver +
# kube-controller-manager on loopback ports, no kubelet and no scheduler.
#
#   scripts/kube-apiserver.sh build       build kube-apiserver and kube-controller-manager once
#                                         into $METAHOOK_KUBE_CACHE/<version>/bin (skipped when cached)
#   scripts/kube-apiserver.sh bin-dir     print that bin directory (builds nothing; fails if absent)
#   scripts/kube-apiserver.sh start DIR   start the three in DIR, wait until usable, write
#                                         DIR/kubeconfig (admin, system:masters) and DIR/pids
#   scripts/kube-apiserver.sh stop DIR    stop what `start DIR` started
#
# With METAHOOK_KUBE_OWNER_PID set, `start` leaves a watchdog that stops the cluster once
# that process is gone (and removes DIR too with METAHOOK_KUBE_REMOVE=1): the tests' way
# to never leak a control plane, however the test binary ends.
#
# Why built from source: no registry with Kubernetes release binaries is reachable from the
# machines this runs on, but Debian's `kubernetes` source package (1.20.5+really1.20.2, the
# full upstream tree with vendor/) and Go 1.19 are. The build takes ~10 minutes on 2 cores,
# so the binaries are cached outside the clone. Where the build is impossible this exits
# non-zero with the reason: the e2e tests then fail loudly instead of skipping.
set -euo pipefail

self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cache_root="${METAHOOK_KUBE_CACHE:-/var/cache/metahook/kube}"
# The Debian source version whose binaries we build and cache.
kube_version="${METAHOOK_KUBE_VERSION:-1.20.5+really1.20.2}"
bin_dir="$cache_root/$kube_version/bin"

die() { echo "kube-apiserver.sh: $*" >&2; exit 1; }
# A failed build leaves its reason here, for `start` (run by the tests) to repeat.
build_error="$cache_root/$kube_version/build-error"
build_die() {
  mkdir -p "$(dirname "$build_error")"
  echo "$*" >"$build_error"
  die "$@"
}
note() { echo "kube-apiserver.sh: $*" >&2; }

have_binaries() { [ -x "$bin_dir/kube-apiserver" ] && [ -x "$bin_dir/kube-controller-manager" ]; }

apt_need() {
  local missing=()
  for package in "$@"; do dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || build_die "needs Debian packages ${missing[*]} and is not root to install them"
  apt-get update -qq || build_die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || build_die "could not install Debian packages ${missing[*]}"
}

# Adds deb-src twins of the machine's Debian entries (deb822 format), so `apt-get source` works.
enable_deb_src() {
  local sources=/etc/apt/sources.list.d/debian.sources target=/etc/apt/sources.list.d/metahook-deb-src.sources
  [ -f "$target" ] && return 0
  [ -f "$sources" ] || build_die "no $sources to derive deb-src entries from"
  [ "$(id -u)" = 0 ] || build_die "needs deb-src entries in $target and is not root to add them"
  sed 's/^Types:.*/Types: deb-src/' "$sources" >"$target"
  apt-get update -qq || build_die "apt-get update with deb-src entries failed"
}

build() {
  if have_binaries; then
    note "cached: $bin_dir"
    return 0
  fi
  mkdir -p "$cache_root"
  # One build at a time on this machine (CI and a developer may start test.sh together).
  exec 9>"$cache_root/.build.lock"
  flock 9
  if have_binaries; then note "cached (built meanwhile): $bin_dir"; return 0; fi

  local started=$SECONDS
  apt_need golang-go golang-github-modern-go-reflect2-dev dpkg-dev make rsync
  enable_deb_src

  local work="$cache_root/$kube_version/build"
  rm -rf "$work"
  mkdir -p "$work/download"
  # apt fetches as _apt where it may write (else it warns and fetches as root).
  id _apt >/dev/null 2>&1 && chown _apt "$work/download"
  # The Debian revision (-1.1+deb12u1, ...) may move with security updates; the upstream
  # version is what the cache is keyed on.
  (cd "$work/download" && apt-get source --download-only kubernetes >/dev/null) \
    || build_die "apt-get source --download-only kubernetes failed (is deb-src reachable?)"
  local dsc
  dsc=$(ls "$work/download"/kubernetes_*.dsc 2>/dev/null | head -n1)
  [ -n "$dsc" ] || build_die "no kubernetes .dsc downloaded into $work/download"
  case "$(basename "$dsc")" in
    "kubernetes_${kube_version}"-*) ;;
    *) build_die "Debian's kubernetes source is $(basename "$dsc"), not $kube_version: set METAHOOK_KUBE_VERSION after checking it still builds" ;;
  esac
  # The Debian patches are not needed (and some target Debian's own packaging); the
  # upstream tree is what we build.
  dpkg-source --no-check --skip-patches -x "$dsc" "$work/tree" >/dev/null \
    || build_die "dpkg-source could not extract $dsc"
  [ -d "$work/tree/vendor" ] || build_die "the extracted source has no vendor/ (not the full upstream tree?)"

  # reflect2 1.0.1 (vendored) crashes Go 1.19 programs on the first map iteration through
  # it ("fatal error: fault" in UnsafeMapType.UnsafeIterate, i.e. on the first custom
  # resource write); Debian ships 1.0.2, which fixes it.
  local reflect2_src=/usr/share/gocode/src/github.com/modern-go/reflect2
  local reflect2_dst="$work/tree/vendor/github.com/modern-go/reflect2"
  [ -d "$reflect2_src" ] || build_die "no $reflect2_src (golang-github-modern-go-reflect2-dev)"
  [ -d "$reflect2_dst" ] || build_die "no vendored reflect2 at $reflect2_dst"
  find "$reflect2_dst" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
  find "$reflect2_src" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
    -exec cp {} "$reflect2_dst/" \;

  # The Kubernetes Makefile wants the tree at $GOPATH/src/k8s.io/kubernetes (openapi-gen
  # and the other generators run first; a plain `go build` fails without their output).
  local gopath="$work/.go"
  mkdir -p "$gopath/src/k8s.io"
  ln -sfn "$work/tree" "$gopath/src/k8s.io/kubernetes"
  local target
  for target in cmd/kube-apiserver cmd/kube-controller-manager; do
    note "building $target (about 5 minutes each on 2 cores)"
    (cd "$gopath/src/k8s.io/kubernetes" \
      && GOPATH="$gopath" GOCACHE="$work/.gocache" CGO_ENABLED=0 GOPROXY=off \
         make WHAT="$target" >"$work/make-$(basename "$target").log" 2>&1) \
      || { tail -n 30 "$work/make-$(basename "$target").log" >&2; build_die "make WHAT=$target failed (log: $work/make-$(basename "$target").log)"; }
  done
  local out="$work/tree/_output/local/bin/linux/amd64"
  [ -d "$out" ] || out=$(dirname "$(find "$work/tree/_output" -type f -name kube-apiserver | head -n1)")
  mkdir -p "$bin_dir.tmp"
  cp "$out/kube-apiserver" "$out/kube-controller-manager" "$bin_dir.tmp/" \
    || build_die "the build did not produce kube-apiserver and kube-controller-manager under $out"
  rm -rf "$bin_dir"
  mv "$bin_dir.tmp" "$bin_dir"
  # The tree, the Go build cache and the downloads are ~3 GB; the binaries are all we keep.
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work" "$build_error"
  note "built in $((SECONDS - started)) s: $bin_dir"
}

# Is the process running? (An exited daemon whose new parent has not reaped it yet is a
# zombie, which `kill -0` still finds.)
alive() { [ -e "/proc/$1" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A loopback port nothing listens on now, below the kernel's ephemeral range: a port from
# that range can be taken, between this check and the bind, by any outgoing connection
# (kube-apiserver's own to etcd among them) or by a test binding 127.0.0.1:0.
free_port() {
  local port low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "$low" -gt 12000 ] || die "the ephemeral port range starts at $low: no room below it for the cluster's ports"
  for _ in $(seq 200); do
    port=$((10000 + RANDOM % (low - 10000)))
    port_open "$port" || { echo "$port"; return 0; }
  done
  die "no free loopback port found"
}

# Waits until `curl` of a path on the API server answers 200, or fails naming it.
wait_for() {
  local dir=$1 path=$2 seconds=$3 what=$4
  local deadline=$((SECONDS + seconds))
  while [ $SECONDS -lt $deadline ]; do
    if curl -fsS -o /dev/null --max-time 2 --cacert "$dir/pki/ca.crt" \
      -H "Authorization: Bearer $(cat "$dir/admin.token")" "$(cat "$dir/server")$path" 2>/dev/null; then
      return 0
    fi
    check_alive "$dir"
    sleep 0.2
  done
  die "$what did not happen within ${seconds}s (logs in $dir/*.log)"
}

# Fails, with the tail of its log, when a started process has exited.
check_alive() {
  local dir=$1 name pid
  while read -r name pid; do
    if ! alive "$pid"; then
      tail -n 20 "$dir/$name.log" >&2 || true
      stop "$dir" >/dev/null 2>&1 || true
      die "$name exited during start-up (log: $dir/$name.log)"
    fi
  done <"$dir/pids"
}

start() {
  local dir=$1
  if ! have_binaries; then
    local reason=""
    [ -f "$build_error" ] && reason=" (the last build failed: $(cat "$build_error"))"
    die "kube-apiserver is not built in $bin_dir$reason: run scripts/kube-apiserver.sh build (scripts/test.sh does)"
  fi
  command -v etcd >/dev/null || die "etcd is not installed (Debian package etcd-server)"
  command -v openssl >/dev/null || die "openssl is not installed"
  command -v curl >/dev/null || die "curl is not installed"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ -s "$dir/pids" ] && die "$dir/pids exists: already started there (stop it first)"
  mkdir -p "$dir/pki" "$dir/etcd"
  : >"$dir/pids"

  # A CA and a serving certificate for 127.0.0.1 (clients verify the server), and the
  # service-account signing key pair.
  (
    cd "$dir/pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=metahook-e2e-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout ca.key -out ca.crt
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
  ) >"$dir/pki/openssl.log" 2>&1 || die "openssl could not make the certificates (log: $dir/pki/openssl.log)"

  # The admin: a static token in system:masters (RBAC lets that group do anything).
  openssl rand -hex 24 >"$dir/admin.token"
  printf '%s,admin,admin,system:masters\n' "$(cat "$dir/admin.token")" >"$dir/tokens.csv"
  chmod 600 "$dir/admin.token" "$dir/tokens.csv"

  local etcd_port etcd_peer_port api_port
  etcd_port=$(free_port)
  etcd_peer_port=$(free_port)
  api_port=$(free_port)
  echo "https://127.0.0.1:$api_port" >"$dir/server"

  etcd --name e2e --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "e2e=http://127.0.0.1:$etcd_peer_port" \
    </dev/null >"$dir/etcd.log" 2>&1 &
  echo "etcd $!" >>"$dir/pids"
  local deadline=$((SECONDS + 30))
  until curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$etcd_port/health" 2>/dev/null; do
    check_alive "$dir"
    [ $SECONDS -lt $deadline ] || die "etcd did not answer on 127.0.0.1:$etcd_port within 30s (log: $dir/etcd.log)"
    sleep 0.1
  done

  "$bin_dir/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" --insecure-port 0 \
    --cert-dir "$dir/pki" --tls-cert-file "$dir/pki/apiserver.crt" --tls-private-key-file "$dir/pki/apiserver.key" \
    --client-ca-file "$dir/pki/ca.crt" \
    --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$dir/pki/sa.pub" --service-account-signing-key-file "$dir/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    </dev/null >"$dir/kube-apiserver.log" 2>&1 &
  echo "kube-apiserver $!" >>"$dir/pids"

  write_kubeconfig "$dir" "$dir/kubeconfig"
  wait_for "$dir" /readyz 90 "kube-apiserver ready (/readyz)"

  "$bin_dir/kube-controller-manager" \
    --kubeconfig "$dir/kubeconfig" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port 0 --port 0 \
    --service-account-private-key-file "$dir/pki/sa.key" --root-ca-file "$dir/pki/ca.crt" \
    --use-service-account-credentials=false \
    </dev/null >"$dir/kube-controller-manager.log" 2>&1 &
  echo "kube-controller-manager $!" >>"$dir/pids"

  # /readyz answers before the bootstrap controllers made the `default` namespace (5-10 s).
  wait_for "$dir" /api/v1/namespaces/default 60 "the default namespace"
  wait_for "$dir" /api/v1/namespaces/default/serviceaccounts/default 60 "the default ServiceAccount (kube-controller-manager)"

  # With METAHOOK_KUBE_OWNER_PID, a watchdog stops everything once that process is gone
  # (a test binary that panics, is killed, or keeps its cluster in a static).
  # In a session of its own, so that whatever kills the owner's process group (and with
  # it the daemons) does not take the watchdog along before it cleaned up.
  if [ -n "${METAHOOK_KUBE_OWNER_PID:-}" ]; then
    setsid bash "$self" watch "$METAHOOK_KUBE_OWNER_PID" "$dir" </dev/null >"$dir/watchdog.log" 2>&1 &
  fi
  echo "$dir/kubeconfig"
}

write_kubeconfig() {
  local dir=$1 out=$2
  cat >"$out" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: $(cat "$dir/server")
    certificate-authority-data: $(base64 -w0 <"$dir/pki/ca.crt")
users:
- name: admin
  user:
    token: $(cat "$dir/admin.token")
contexts:
- name: e2e
  context:
    cluster: e2e
    user: admin
current-context: e2e
KUBECONFIG
  chmod 600 "$out"
}

stop() {
  local dir=$1 name pid
  [ -f "$dir/pids" ] || { note "nothing started in $dir"; return 0; }
  # Reverse order: the controller manager and API server before etcd.
  tac "$dir/pids" | while read -r name pid; do
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      note "$name ($pid) ignored SIGTERM for 10s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -f "$dir/pids"
}

# Stops what `start DIR` started once process OWNER is gone (or `stop DIR` ran); with
# METAHOOK_KUBE_REMOVE=1 also removes DIR, which was the owner's alone.
watch() {
  local owner=$1 dir=$2
  while alive "$owner" && [ -f "$dir/pids" ]; do sleep 1; done
  stop "$dir"
  if [ "${METAHOOK_KUBE_REMOVE:-}" = 1 ]; then rm -rf "$dir"; fi
}

case "${1:-}" in
  build) build ;;
  bin-dir) have_binaries || die "not built: run scripts/kube-apiserver.sh build"; echo "$bin_dir" ;;
  start) [ -n "${2:-}" ] || die "usage: $0 start DIR"; start "$2" ;;
  stop) [ -n "${2:-}" ] || die "usage: $0 stop DIR"; stop "$2" ;;
  watch) [ -n "${3:-}" ] || die "usage: $0 watch OWNER-PID DIR"; watch "$2" "$3" ;;
  *) die "usage: $0 build | bin-dir | start DIR | stop DIR" ;;
esac
