"""systemd units of the inference servers and the health check: render, install, verify."""
