# Shared by scripts/install-tools.sh and every scripts/tools/*.sh part (sourced, not run).
# Tools land in $METAHOOK_TOOLS_DIR/bin, which the tests search before PATH.
export METAHOOK_TOOLS_DIR="${METAHOOK_TOOLS_DIR:-/var/cache/metahook/tools}"
mkdir -p "$METAHOOK_TOOLS_DIR/bin"

apt_updated="${apt_updated:-}"
apt_install() {
  # Installs Debian packages that are missing. Failures are reported, not fatal: the tests
  # that need a missing tool fail and name it.
  local missing=()
  for package in "$@"; do dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then echo "not root: cannot install ${missing[*]}"; return 0; fi
  if [ -z "$apt_updated" ]; then apt-get update -qq || true; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || echo "could not install ${missing[*]}"
}

# A Python virtual environment of the tools' own, so pip never touches the system's.
tools_venv() {
  local venv="$METAHOOK_TOOLS_DIR/venv"
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  echo "$venv"
}

# Installs PyPI packages (name==version) into the tools' venv unless already there.
pip_install() {
  local venv; venv=$(tools_venv)
  local missing=()
  for spec in "$@"; do "$venv/bin/pip" show "${spec%%[=<>]*}" >/dev/null 2>&1 || missing+=("$spec"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  "$venv/bin/pip" install -q --disable-pip-version-check "${missing[@]}" || echo "could not install ${missing[*]}"
}

# Links an executable into $METAHOOK_TOOLS_DIR/bin under a name.
link_tool() { ln -sf "$1" "$METAHOOK_TOOLS_DIR/bin/$2"; }
