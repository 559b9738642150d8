"""A small client for Label Studio's HTTP API (1.2x), the calls the labelling integration needs.

Authentication takes either kind of Label Studio token: a *personal access token* (a JWT refresh token;
exchanged at ``/api/token/refresh`` for a short-lived access token, sent as ``Bearer``) or a *legacy token*
(sent as ``Token``; a new organisation has them switched off unless Label Studio started with
``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true``). Connection errors, timeouts and 5xx answers raise
:class:`ToolUnreachable` (try again later, nothing is lost); other refusals raise :class:`ToolRefused`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import requests

logger = logging.getLogger(__name__)
PAGE_SIZE = 500


class ToolError(Exception):
    """Label Studio could not do what was asked."""


class ToolUnreachable(ToolError):
    """Label Studio is down, slow or failing (5xx): the caller retries later."""


class ToolRefused(ToolError):
    """Label Studio answered with a refusal (bad token, bad request, missing project)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


class LabelStudio:
    def __init__(self, url: str, token: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token.strip()
        self.timeout = timeout
        self._access: tuple[str, float] | None = None
        self._session = requests.Session()

    # --- transport --------------------------------------------------------------------------------

    def _auth_header(self) -> str:
        if not _is_jwt(self.token):
            return f"Token {self.token}"
        if self._access is None or self._access[1] < time.monotonic():
            answer = self._send("POST", "/api/token/refresh", json={"refresh": self.token}, auth=False)
            self._access = (str(answer["access"]), time.monotonic() + 240)  # access tokens live ~5 minutes
        return f"Bearer {self._access[0]}"

    def _send(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        headers = {"Authorization": self._auth_header()} if auth else {}
        try:
            response = self._session.request(
                method, self.url + path, headers=headers, timeout=self.timeout, allow_redirects=False, **kwargs
            )
        except requests.RequestException as exc:
            raise ToolUnreachable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise ToolUnreachable(f"HTTP {response.status_code} from {path}")
        if response.status_code >= 300:
            raise ToolRefused(f"HTTP {response.status_code} from {path}: {response.text[:300]}", response.status_code)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ToolUnreachable(f"not JSON from {path}") from exc

    # --- calls --------------------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        return dict(self._send("GET", "/api/current-user/whoami"))

    def version(self) -> str:
        try:
            answer = self._send("GET", "/api/version")
        except ToolRefused:
            return ""
        release = answer.get("release") if isinstance(answer, dict) else None
        return str(release or answer.get("label-studio-os-package", {}).get("version", "")) if answer else ""

    def project_create(self, *, title: str, label_config: str, instruction: str) -> dict[str, Any]:
        body = {
            "title": title[:50],
            "label_config": label_config,
            "expert_instruction": instruction,
            "show_instruction": bool(instruction),
            "show_collab_predictions": True,  # pre-annotations appear in the editor, ready to correct
        }
        return dict(self._send("POST", "/api/projects", json=body))

    def project(self, project_id: int) -> dict[str, Any]:
        return dict(self._send("GET", f"/api/projects/{project_id}"))

    def project_update(self, project_id: int, **fields: Any) -> dict[str, Any]:
        return dict(self._send("PATCH", f"/api/projects/{project_id}", json=fields))

    def tasks_import(self, project_id: int, tasks: list[dict[str, Any]]) -> int:
        answer = self._send("POST", f"/api/projects/{project_id}/import", json=tasks)
        return int(answer.get("task_count", 0))

    def tasks(self, project_id: int, *, fields: str = "all") -> Iterator[dict[str, Any]]:
        """Every task of a project (paged), with its annotations' summary (``is_labeled``, ``total_annotations``)."""
        page = 1
        while True:
            try:
                answer = self._send(
                    "GET",
                    "/api/tasks",
                    params={"project": project_id, "page": page, "page_size": PAGE_SIZE, "fields": fields},
                )
            except ToolRefused as exc:
                if exc.status == 404 and page > 1:  # past the last page
                    return
                raise
            batch = answer.get("tasks", []) if isinstance(answer, dict) else answer
            yield from batch
            if len(batch) < PAGE_SIZE:
                return
            page += 1

    def task_annotations(self, task_id: int) -> list[dict[str, Any]]:
        return list(self._send("GET", f"/api/tasks/{task_id}/annotations/"))

    def annotation_create(self, task_id: int, result: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return dict(self._send("POST", f"/api/tasks/{task_id}/annotations/", json={"result": result, **extra}))

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """The annotated tasks of a project with all their annotations (Label Studio's JSON export)."""
        return list(self._send("GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON"}))

    def webhook_create(self, *, project_id: int, url: str, secret_header: tuple[str, str]) -> dict[str, Any]:
        body = {
            "project": project_id,
            "url": url,
            "send_payload": True,
            "send_for_all_actions": False,
            "headers": {secret_header[0]: secret_header[1]},
            "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"],
        }
        return dict(self._send("POST", "/api/webhooks/", json=body))

    def webhook_delete(self, webhook_id: int) -> None:
        try:
            self._send("DELETE", f"/api/webhooks/{webhook_id}/")
        except ToolRefused as exc:
            if exc.status != 404:
                raise

    def invite_url(self) -> str:
        answer = self._send("GET", "/api/invite")
        link = str(answer.get("invite_url", "")) if isinstance(answer, dict) else ""
        return self.url + link if link.startswith("/") else link

    def member_emails(self) -> set[str]:
        answer = self._send("GET", "/api/users/")
        users = answer.get("results", answer) if isinstance(answer, dict) else answer
        return {str(u.get("email", "")).lower() for u in users if isinstance(u, dict)}
