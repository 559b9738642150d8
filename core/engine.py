"""Which container engine (if any) the platform can reach through the Docker Engine API."""

from __future__ import annotations

import os
from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class EngineStatus:
    available: bool
    host: str
    name: str = ""
    version: str = ""
    error: str = ""


def engine_status(timeout: int = 3) -> EngineStatus:
    host = settings.DOCKER_HOST or ("unix:///var/run/docker.sock" if os.path.exists("/var/run/docker.sock") else "")
    if not host:
        return EngineStatus(available=False, host="", error="no DOCKER_HOST and no /var/run/docker.sock")
    import docker

    try:
        client = docker.DockerClient(base_url=host, timeout=timeout)
        info = client.version()
        client.close()
    except Exception as exc:  # the SDK raises many kinds; any means "not reachable"
        return EngineStatus(available=False, host=host, error=str(exc)[:300])
    components = info.get("Components") or [{}]
    name = str(components[0].get("Name") or info.get("Platform", {}).get("Name") or "engine")
    return EngineStatus(available=True, host=host, name=name, version=str(info.get("Version", "")))


def engine_status_cached(seconds: int = 60) -> EngineStatus:
    """The probe for pages: an unreachable engine would otherwise cost its timeout on every render."""
    from dataclasses import asdict

    from django.core.cache import cache

    cached = cache.get("ymir:engine-status")
    if cached is None:
        cached = asdict(engine_status())
        cache.set("ymir:engine-status", cached, seconds)
    return EngineStatus(**cached)
