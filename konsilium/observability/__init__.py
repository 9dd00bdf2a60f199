"""Traces (OpenTelemetry), metrics (Prometheus) and logs (JSON lines): README "Observability"."""
