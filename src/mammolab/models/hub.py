"""Is the Hugging Face hub reachable? Asked once, in about a millisecond (at most ``timeout``), before timm asks.

huggingface_hub retries a failed connection five times with growing pauses before it looks in its
cache: ``--weights imagenet`` on an offline machine took about 50 s (measured) to reach its error.
One TCP connect answers the question first; when it fails, timm is run with the hub in offline
mode, so weights fetched earlier still load from the cache and missing ones fail at once.
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

__all__ = ["hub_offline_reason", "offline_if_unreachable"]


def hub_offline_reason(timeout: float = 2.0) -> str | None:
    """Why the Hugging Face hub cannot be reached right now, or ``None`` when it can.

    Honours ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and an HTTPS proxy (then the proxy is what must
    answer). The name lookup and the connect run in a helper thread, so a resolver that hangs
    cannot make this take longer than ``timeout`` seconds.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = urlsplit(constants.ENDPOINT)
    scheme = endpoint.scheme or "https"
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if scheme == "http" else 443)
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = parts.hostname or host, parts.port or 8080
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"cannot connect to {host}:{port} ({exc.strerror or exc.__class__.__name__})")

    thread = threading.Thread(target=probe, name="mammolab-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer from {host}:{port} within {timeout:g} s"


@contextmanager
def offline_if_unreachable(timeout: float = 2.0) -> Iterator[str | None]:
    """Within the block, huggingface_hub works from its cache only when the hub cannot be reached;
    yields the reason (``None`` when online). The previous offline setting is restored after."""
    from huggingface_hub import constants

    reason = hub_offline_reason(timeout)
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or reason is not None
    try:
        yield reason
    finally:
        constants.HF_HUB_OFFLINE = before
