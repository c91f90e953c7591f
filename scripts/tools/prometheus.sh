# Prometheus and promtool (Debian's `prometheus`): the metrics lint, the alert rules' unit
# tests and the live alerting test.
apt_install prometheus
