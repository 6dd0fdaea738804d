"""The server's defaults and its exposure rule, shared by the single-process server and the Ray replicas.

Both deployments (:mod:`swift_integrations.serve.command` in one process,
:mod:`swift_integrations.serve.ray_serve` as replicas) admit the same number of requests, give a
generation the same deadline, and refuse the same thing: an open model (no API key) reachable from
other machines.
"""

__all__ = ["DEFAULT_MAX_QUEUE", "DEFAULT_REQUEST_TIMEOUT", "LOCAL_HOSTS", "check_exposure"]

#: Hosts that may be served without an API key (only this machine can reach them).
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Requests admitted at once (running or waiting); 429 past it.
DEFAULT_MAX_QUEUE = 16
#: Seconds a generation may take.
DEFAULT_REQUEST_TIMEOUT = 300.0


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse to serve an open model beyond this machine's loopback (``ValueError``)."""
    if api_key is None and host not in LOCAL_HOSTS:
        raise ValueError(f"serving on {host} needs an API key (--api-key or SWIFT_API_KEY)")
