"""Who may listen where: beyond loopback the server needs an API key.

The key comes in as an argument; reading it from the environment (API_KEY_ENV) is the CLI's job, so
this module stays light enough for the CLI to import at startup."""

from __future__ import annotations

import ipaddress

from tuneforge.errors import UserError

API_KEY_ENV = "TUNEFORGE_API_KEY"


def is_loopback(host: str) -> bool:
    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def resolve_api_key(api_key: str | None, host: str) -> str | None:
    """The key given (an empty one counts as none); refuses a non-loopback host without one (UserError)."""
    key = api_key or None
    if not key and not is_loopback(host):
        raise UserError(f"refusing to listen on {host} without an API key: anyone who can reach it could use the "
                        f"models. Give --api-key KEY (or set {API_KEY_ENV}), or listen on 127.0.0.1")
    return key
