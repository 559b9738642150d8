from __future__ import annotations

from datetime import date, timedelta

from django.db.models import Count, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from core.models import ApiToken, User
from models_app.models import Task


def users_for_management() -> QuerySet[User]:
    return User.objects.order_by("id")


def tokens_of(user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user, kind=ApiToken.Kind.PERSONAL).order_by("-created_at")


def recent_tasks(user: User, limit: int = 10) -> QuerySet[Task]:
    return Task.objects.filter(user=user).select_related("project").order_by("-created_at")[:limit]


def activity_calendar(user: User, weeks: int = 26) -> list[list[dict[str, object]]]:
    """Tasks per day for the last ``weeks`` weeks, as columns of 7 days (Monday first), one query."""
    today = timezone.localdate()
    start = today - timedelta(days=today.weekday() + 7 * (weeks - 1))
    counts: dict[date, int] = {
        row["day"]: row["n"]
        for row in Task.objects.filter(user=user, created_at__date__gte=start)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(n=Count("id"))
    }
    peak = max(counts.values(), default=0)
    columns: list[list[dict[str, object]]] = []
    for week in range(weeks):
        column = []
        for weekday in range(7):
            day = start + timedelta(days=7 * week + weekday)
            n = counts.get(day, 0)
            level = 0 if n == 0 or peak == 0 else min(4, 1 + (4 * n - 1) // peak)
            column.append({"day": day, "count": n, "level": level, "future": day > today})
        columns.append(column)
    return columns
