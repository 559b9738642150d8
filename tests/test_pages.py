"""Home, navigation, projects and the Chinese catalog, rendered server-side."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from models_app.models import Task
from projects.models import Project
from tests.conftest import logged_in
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_home_shows_my_projects_recent_tasks_and_activity(trainer):
    mine = ProjectFactory(owner=trainer, name="lego bricks")
    ProjectFactory(name="someone else's")
    now = timezone.now()
    for days_ago in (0, 0, 0, 3):
        Task.objects.create(
            user=trainer, project=mine, kind=Task.Kind.TRAINING, created_at=now - timedelta(days=days_ago)
        )
    Task.objects.create(user=UserFactory(), kind=Task.Kind.MINING)
    page = logged_in(trainer).get(reverse("home")).content.decode()
    assert "lego bricks" in page and "someone else" not in page
    assert page.count("Training #") == 4 and "Mining #" not in page
    today = timezone.localdate().isoformat()
    earlier = (timezone.localdate() - timedelta(days=3)).isoformat()
    assert f'title="{today}: 3" data-count="3"' in page
    assert f'title="{earlier}: 1" data-count="1"' in page
    assert 'class="cal-day lvl-4' in page  # the busiest day is the darkest


def test_home_query_count_does_not_grow_with_tasks(trainer, django_assert_max_num_queries):
    project = ProjectFactory(owner=trainer)
    Task.objects.bulk_create(Task(user=trainer, project=project, kind=Task.Kind.IMPORT) for _ in range(50))
    client = logged_in(trainer)
    with django_assert_max_num_queries(8):
        client.get(reverse("home"))


def test_navigation_hides_admin_links_from_trainers(trainer, admin_user):
    trainer_page = logged_in(trainer).get(reverse("home")).content.decode()
    admin_page = logged_in(admin_user).get(reverse("home")).content.decode()
    assert reverse("user_list") not in trainer_page and reverse("user_list") in admin_page
    assert reverse("project_list") in trainer_page


def test_anonymous_visitors_are_sent_to_login():
    response = Client().get(reverse("home"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_project_create_and_duplicate_name(trainer):
    client = logged_in(trainer)
    response = client.post(reverse("project_list"), {"name": "Bricks", "description": "first"})
    project = Project.objects.get(owner=trainer)
    assert response.status_code == 302 and response["Location"] == reverse("project_detail", args=[project.pk])
    response = client.post(reverse("project_list"), {"name": "bricks"})
    assert response.status_code == 422
    assert "already have a project" in response.content.decode()
    assert Project.objects.filter(owner=trainer).count() == 1


def test_another_users_project_is_a_404(trainer):
    other = ProjectFactory()
    assert logged_in(trainer).get(reverse("project_detail", args=[other.pk])).status_code == 404


def test_pages_render_in_simplified_chinese(trainer):
    client = logged_in(trainer)
    client.post(reverse("set_language"), {"language": "zh-hans", "next": "/"})
    page = client.get(reverse("home")).content.decode()
    assert "首页" in page and "我的项目" in page and 'lang="zh-hans"' in page
    login_page = Client(headers={"Accept-Language": "zh-hans"}).get(reverse("login")).content.decode()
    assert "登录" in login_page


def test_user_management_page_shows_workspace_space(admin_user):
    page = logged_in(admin_user).get(reverse("user_list")).content.decode()
    assert "free of" in page and "Container engine" in page
