"""What operators see: Prometheus metrics and their exposition, health, systemd
notification and the watchdog, and logging (also across worker processes)."""
