# buildah builds the images offline; podman (with runc) runs them in the tests. Debian's
# podman asks for nofile/nproc ulimits this sandbox refuses, and its default crun fails on
# this host's hybrid cgroups, so the tests pass --runtime runc and we clear the ulimits.
apt_install buildah podman runc catatonit uidmap
containers_conf=/etc/containers/containers.conf
if [ "$(id -u)" = 0 ] && [ -d /etc/containers ] && ! grep -q '^default_ulimits *= *\[\]' "$containers_conf" 2>/dev/null; then
  if grep -q '^\[containers\]' "$containers_conf" 2>/dev/null; then
    sed -i '/^\[containers\]/a default_ulimits = []' "$containers_conf"
  else
    printf '[containers]\ndefault_ulimits = []\n' >>"$containers_conf"
  fi
  echo "podman: cleared default_ulimits in $containers_conf"
fi
