"""Health checks (see llmctl/cli/health.py).

plan.py      what a run takes from the validated config, cached in the state dir between runs
targets.py   configured services (from the plan) and ad-hoc URLs -> Targets, keys read each run
probes.py    TCP, /health, /v1/models, a one-token completion (http.client), GPU offload
policy.py    when a failing service may be restarted (threshold, backoff, budget), its state file
restart.py   the restart command (systemctl restart {unit})
run.py       one run under the host-wide lock: probe, decide, restart, wait for recovery
report.py    Nagios lines, JSON, the node_exporter textfile, log lines
"""
