"""Health checks: probes, the remediation policy, reporters (see llmctl/cli/health.py)."""
