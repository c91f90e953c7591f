# tansu, a Kafka-compatible broker written in Rust (crates.io), for the Kafka sink's tests
# (tests/tests/kafka_sink.rs) and benchmark: Apache Kafka itself is in none of the registries
# this machine reaches. The default features carry no storage engine, so `dynostore` (the
# `memory://` engine most tests use) is named, `libsql` (the `sqlite://` file in which the
# SASL tests create their SCRAM users before the broker demands logins, tests/src/tansu.rs)
# and `postgres` with them. About 18 minutes to build the first time on 2 cores, into
# $METAHOOK_TOOLS_DIR/tansu with a target directory of its own; nothing once cached (the
# stamp names the version and the features). A failed build is reported, not fatal: the
# Kafka tests then fail naming tansu.
tansu_version=0.6.0
tansu_features=postgres,dynostore,libsql
tansu_stamp="$tansu_version $tansu_features"
tansu_root="$METAHOOK_TOOLS_DIR/tansu"
if [ -x "$tansu_root/bin/tansu" ] && [ "$(cat "$tansu_root/VERSION" 2>/dev/null)" = "$tansu_stamp" ]; then
  echo "tansu $tansu_stamp already installed"
elif command -v cargo >/dev/null 2>&1; then
  if CARGO_TARGET_DIR="$METAHOOK_TOOLS_DIR/tansu-target" nice -n 10 cargo install --locked --force --quiet \
      --root "$tansu_root" --version "$tansu_version" --features "$tansu_features" tansu; then
    echo "$tansu_stamp" >"$tansu_root/VERSION"
    rm -rf "$METAHOOK_TOOLS_DIR/tansu-target"
  else
    echo "tansu: cargo install failed; the Kafka tests will fail naming tansu"
  fi
else
  echo "cargo is missing: cannot build tansu"
fi
[ -x "$tansu_root/bin/tansu" ] && link_tool "$tansu_root/bin/tansu" tansu
true
