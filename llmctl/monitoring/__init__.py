"""Monitoring for the services llmctl runs: what `llmctl monitoring render` writes.

render.py   the config -> Prometheus scrape config, alert and recording rules, Grafana dashboard,
            from the Jinja2 templates in templates/monitoring/ (shipped in the wheel)
escape.py   one escaper per target format: YAML, JSON, PromQL strings and regexes, the Go templates
            of alert annotations
"""
