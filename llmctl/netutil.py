"""Small network helpers shared by features (serve binds, units restrict addresses, health and
monitoring dial the services)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connect_host(bind: str) -> str:
    """Where a client on the same host dials a service bound to `bind`: a wildcard bind
    (0.0.0.0, ::, empty) is reached on loopback; brackets are dropped."""
    host = bind.strip("[]")
    if host == "":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a name
        return host
    if address.is_unspecified:
        return "127.0.0.1" if address.version == 4 else "::1"
    return host


def host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets (URLs, Prometheus targets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
