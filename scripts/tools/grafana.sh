# TypeScript and Grafana's own dashboard types (npm `@grafana/schema`): the dashboards test
# typechecks each dashboard JSON as a `Dashboard` literal with `tsc --noEmit --strict`.
# Pinned, so a new Grafana release cannot change the verdict between two runs. TypeScript
# stays on 5.x, the JavaScript compiler (7.x is the native rewrite, packaged differently).
grafana_typescript_version=5.9.3
grafana_schema_version=13.2.3

grafana_node_dir="$METAHOOK_TOOLS_DIR/node"
grafana_installed() {
  # Both packages present at the pinned versions (read from their package.json).
  local dir="$grafana_node_dir/node_modules"
  [ -f "$dir/typescript/package.json" ] && [ -f "$dir/@grafana/schema/package.json" ] || return 1
  grep -q "\"version\": \"$grafana_typescript_version\"" "$dir/typescript/package.json" \
    && grep -q "\"version\": \"$grafana_schema_version\"" "$dir/@grafana/schema/package.json"
}

if ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi
if grafana_installed; then
  echo "typescript $grafana_typescript_version and @grafana/schema $grafana_schema_version already installed"
elif command -v npm >/dev/null 2>&1; then
  mkdir -p "$grafana_node_dir"
  # A package.json of its own keeps npm from walking up into some other project.
  [ -f "$grafana_node_dir/package.json" ] \
    || printf '{"name":"metahook-tools","private":true}\n' > "$grafana_node_dir/package.json"
  npm install --prefix "$grafana_node_dir" --no-audit --no-fund --loglevel=error --save-exact \
    "typescript@$grafana_typescript_version" "@grafana/schema@$grafana_schema_version" \
    || echo "could not install typescript and @grafana/schema with npm"
else
  echo "npm is missing: cannot install typescript and @grafana/schema"
fi
[ -x "$grafana_node_dir/node_modules/.bin/tsc" ] && link_tool "$grafana_node_dir/node_modules/.bin/tsc" tsc
true
