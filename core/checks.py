from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning, register

from core.workspace import workspace_status


@register("ymir", deploy=False)
def check_workspace(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    status = workspace_status()
    if not status.exists:
        return [
            Warning(
                f"The workspace {status.path} does not exist yet.",
                hint="The start command creates it; or set YMIR_WORKSPACE to an existing folder.",
                id="ymir.W002",
            )
        ]
    if not status.writable:
        return [Error(f"The workspace {status.path} is not writable.", id="ymir.E002")]
    if status.low_space:
        return [Warning(f"The workspace {status.path} has little free space left.", id="ymir.W001")]
    return []
