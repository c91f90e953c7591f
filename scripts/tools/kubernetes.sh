# A real Kubernetes control plane for the end-to-end tests (tests/tests/e2e/): etcd from
# Debian, kube-apiserver and kube-controller-manager 1.20 built from Debian's source package
# by scripts/kube-apiserver.sh into /var/cache/metahook/kube (about 10 minutes the first
# time on 2 cores, nothing once cached). A failed build is reported here and not fatal: the
# e2e tests then fail, quoting the reason.
apt_install etcd-server curl openssl
if ! bash scripts/kube-apiserver.sh build; then
  echo "kubernetes: the build failed; the e2e tests will fail with its reason"
fi
