"""Joining an existing Ray cluster (``ray.address``)."""

from __future__ import annotations

import socket

from fedmia.errors import InputError


class ClusterUnreachableError(InputError):
    """No Ray head answers at the configured address."""


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast (ray.init would retry for minutes) when ``address`` names no listening Ray head."""
    if address is None or address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnreachableError(f"ray.address={address!r}: expected HOST:PORT, ray://HOST:PORT or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterUnreachableError(
            f"ray.address={address}: no Ray head answers there ({exc.strerror or exc}); "
            f"start one with `ray start --head --port={port}` or fix the address"
        ) from None
