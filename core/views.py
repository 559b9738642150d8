from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template import loader
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from core import services, tokens
from core.engine import engine_status_cached
from core.errors import ServiceError
from core.forms import (
    EmailForm,
    LoginForm,
    PasswordChangeForm,
    PasswordSetForm,
    RegisterForm,
    RoleForm,
    TokenCreateForm,
    UserCreateForm,
)
from core.models import ApiToken, User
from core.selectors import activity_calendar, recent_tasks, tokens_of, users_for_management
from core.workspace import workspace_status
from projects.selectors import projects_of

View = Callable[..., HttpResponse]


def admin_required(view: View) -> View:
    @wraps(view)
    @login_required
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_platform_admin:  # type: ignore[union-attr]
            return forbidden(request, _("Only administrators can open this page."))
        return view(request, *args, **kwargs)

    return wrapper


def _actor(request: HttpRequest) -> User:
    return cast(User, request.user)


def forbidden(request: HttpRequest, message: str) -> HttpResponse:
    return render(request, "403.html", {"message": message}, status=403)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    user: User = request.user  # type: ignore[assignment]
    return render(
        request,
        "core/home.html",
        {
            "projects": projects_of(user)[:8],
            "tasks": recent_tasks(user),
            "calendar": activity_calendar(user),
        },
    )


class ThrottledLoginView(LoginView):
    form_class = LoginForm
    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["first_user"] = not User.objects.exists()
        context["registration_open"] = settings.YMIR_REGISTRATION_OPEN or context["first_user"]
        return context


def register(request: HttpRequest) -> HttpResponse:
    first_user = not User.objects.exists()
    if not (settings.YMIR_REGISTRATION_OPEN or first_user):
        return forbidden(request, _("Registration is closed. Ask an administrator for an account."))
    if request.user.is_authenticated:
        return redirect("home")
    form = RegisterForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = services.user_register(
                username=form.cleaned_data["username"],
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password1"],
            )
        except ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            if user.role == User.Role.SUPER_ADMIN:
                messages.success(request, _("Welcome! As the first user you are the super admin."))
                if settings.YMIR_DEMO:
                    from datasets.services import demo_project_start

                    demo_project_start(user=user)
                    messages.info(request, _("A demo project with a synthetic Lego-like dataset is being imported."))
            return redirect("home")
    return render(request, "registration/register.html", {"form": form, "first_user": first_user})


@login_required
def account(request: HttpRequest) -> HttpResponse:
    user: User = request.user  # type: ignore[assignment]
    return render(
        request,
        "core/account.html",
        {
            "email_form": EmailForm(initial={"email": user.email}),
            "password_form": PasswordChangeForm(),
            "token_form": TokenCreateForm(),
            "tokens": tokens_of(user),
            "new_token": request.session.pop("new_token", None),
        },
    )


def _account_with(request: HttpRequest, **forms: Any) -> HttpResponse:
    user: User = request.user  # type: ignore[assignment]
    context = {
        "email_form": EmailForm(initial={"email": user.email}),
        "password_form": PasswordChangeForm(),
        "token_form": TokenCreateForm(),
        "tokens": tokens_of(user),
    }
    context.update(forms)
    return render(request, "core/account.html", context, status=422)


@login_required
@require_POST
def account_email(request: HttpRequest) -> HttpResponse:
    form = EmailForm(request.POST)
    if form.is_valid():
        services.user_set_email(actor=_actor(request), user=_actor(request), email=form.cleaned_data["email"])
        messages.success(request, _("Email saved."))
        return redirect("account")
    return _account_with(request, email_form=form)


@login_required
@require_POST
def account_password(request: HttpRequest) -> HttpResponse:
    form = PasswordChangeForm(request.POST)
    if form.is_valid():
        try:
            services.account_change_password(
                user=_actor(request),
                old_password=form.cleaned_data["old_password"],
                new_password=form.cleaned_data["new_password1"],
            )
        except ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            # The session's password hash no longer matches: the user is logged out everywhere, here too.
            messages.success(request, _("Password changed. Log in with your new password."))
            return redirect("login")
    return _account_with(request, password_form=form)


@login_required
@require_POST
def token_create(request: HttpRequest) -> HttpResponse:
    form = TokenCreateForm(request.POST)
    if not form.is_valid():
        return _account_with(request, token_form=form)
    _token, raw = tokens.token_issue(
        user=_actor(request),
        name=form.cleaned_data["name"],
        kind=ApiToken.Kind.PERSONAL,
        days=form.cleaned_data["days"],
    )
    request.session["new_token"] = raw
    messages.success(request, _("Token created. Copy it now: it is shown only once."))
    return redirect("account")


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    try:
        tokens.token_revoke(user=_actor(request), token_id=token_id)
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("Token revoked."))
    return redirect("account")


# --- User management (admins) ---------------------------------------------------------------------


@admin_required
def user_list(request: HttpRequest, create_form: UserCreateForm | None = None) -> HttpResponse:
    return render(
        request,
        "core/user_list.html",
        {
            "users": users_for_management(),
            "create_form": create_form or UserCreateForm(),
            "roles": User.Role.choices,
            "workspace": workspace_status(),
            "engine": engine_status_cached(),
        },
        status=422 if create_form is not None else 200,
    )


@admin_required
@require_POST
def user_create(request: HttpRequest) -> HttpResponse:
    form = UserCreateForm(request.POST)
    if form.is_valid():
        try:
            user = services.user_create(actor=_actor(request), **form.cleaned_data)
        except ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, _("User %(name)s created.") % {"name": user.username})
            return redirect("user_list")
    return user_list(request, create_form=form)


def _user_action(
    request: HttpRequest, user_id: int, form_class: type[Any] | None, action: Callable[..., Any]
) -> HttpResponse:
    target = get_object_or_404(User, pk=user_id)
    form = form_class(request.POST) if form_class else None
    if form is not None and not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, f"{target.username}: {error}")
        return redirect("user_list")
    try:
        action(target, **(form.cleaned_data if form is not None else {}))
    except ServiceError as exc:
        messages.error(request, f"{target.username}: {exc.message}")
    else:
        messages.success(request, _("%(name)s: saved.") % {"name": target.username})
    return redirect("user_list")


@admin_required
@require_POST
def user_role(request: HttpRequest, user_id: int) -> HttpResponse:
    return _user_action(
        request,
        user_id,
        RoleForm,
        lambda u, role: services.user_set_role(actor=_actor(request), user=u, role=role),
    )


@admin_required
@require_POST
def user_email(request: HttpRequest, user_id: int) -> HttpResponse:
    return _user_action(
        request,
        user_id,
        EmailForm,
        lambda u, email: services.user_set_email(actor=_actor(request), user=u, email=email),
    )


@admin_required
@require_POST
def user_password(request: HttpRequest, user_id: int) -> HttpResponse:
    return _user_action(
        request,
        user_id,
        PasswordSetForm,
        lambda u, password: services.user_set_password(actor=_actor(request), user=u, password=password),
    )


@admin_required
@require_POST
def user_active(request: HttpRequest, user_id: int) -> HttpResponse:
    active = request.POST.get("active") == "1"
    return _user_action(
        request,
        user_id,
        None,
        lambda u: services.user_set_active(actor=_actor(request), user=u, active=active),
    )


@admin_required
@require_POST
def user_delete(request: HttpRequest, user_id: int) -> HttpResponse:
    return _user_action(request, user_id, None, lambda u: services.user_delete(actor=_actor(request), user=u))


# --- Health and errors ----------------------------------------------------------------------------


def healthz(request: HttpRequest) -> JsonResponse:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


def _error(request: HttpRequest, status: int, code: str, message: str) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"error": {"code": code, "message": message, "details": None}}, status=status)
    template = loader.get_template(f"{status}.html")
    return HttpResponse(template.render({"message": message}, request), status=status)


def error_400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error(request, 400, "bad_request", _("Bad request."))


def error_403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error(request, 403, "forbidden", _("You do not have access to this."))


def error_404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error(request, 404, "not_found", _("Not found."))


def error_500(request: HttpRequest) -> HttpResponse:
    return _error(request, 500, "server_error", _("Something went wrong on our side. It has been logged."))
