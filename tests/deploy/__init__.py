"""Deployment checks: manifests, Dockerfile, systemd units and Prometheus rules (tools from scripts/install_check_tools.sh)."""
