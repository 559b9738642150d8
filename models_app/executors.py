"""Executor images (admins only): add by reference, read ``/img-man`` without running the image, copy,
edit, relate, delete; local executors (a command line over a folder holding ``img-man/``)."""

from __future__ import annotations

import io
import re
import shlex
import tarfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils.translation import gettext as _

from core.errors import Conflict, Forbidden, Invalid
from core.models import User
from models_app.contract import ContractError, read_manifest
from models_app.models import ExecutorImage, Task
from models_app.services import task_begin, task_create, task_finish

# registry[:port]/path[:tag][@sha256:digest], as the Docker reference grammar (lower-case path components).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:localhost|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+|[a-zA-Z0-9-]+(?=:[0-9]))(?::[0-9]+)?"
REFERENCE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@sha256:[a-f0-9]{{64}})?$"
)
IMG_MAN_LIMIT = 1 << 20


def reference_validate(reference: str) -> str:
    reference = reference.strip()
    if not reference or len(reference) > 255 or not REFERENCE.match(reference):
        raise Invalid(
            _("“%(ref)s” is not an image reference (e.g. registry/name:tag).") % {"ref": reference[:80]},
            code="invalid_reference",
        )
    return reference


def _admin(user: User) -> None:
    if not user.is_platform_admin:
        raise Forbidden(_("Only administrators manage executor images."), code="forbidden")


def _name(name: str) -> str:
    name = " ".join(name.split())
    if not name or len(name) > 100:
        raise Invalid(_("An executor needs a name of at most 100 characters."), code="invalid_name")
    return name


def image_add(*, user: User, name: str, reference: str, description: str = "") -> ExecutorImage:
    """Record a container image and read its capabilities in a task (pulling it when it is not here)."""
    _admin(user)
    reference = reference_validate(reference)
    try:
        with transaction.atomic():
            image = ExecutorImage.objects.create(
                name=_name(name), reference=reference, description=description.strip(), created_by=user
            )
            task = task_create(user=user, kind=Task.Kind.IMAGE_PULL, parameters={"image": image.pk, "ref": reference})
            image.conformance = {"pull_task": task.pk}
            image.save(update_fields=["conformance"])
            transaction.on_commit(lambda: _enqueue(image.pk))
    except IntegrityError:
        raise Conflict(_("An executor with this name exists."), code="name_taken") from None
    return image


def _enqueue(image_id: int) -> None:
    from models_app.tasks import executor_image_add

    executor_image_add.delay(image_id)


def local_add(
    *,
    user: User,
    name: str,
    command: str | list[str],
    folder: str,
    binds: list[str] | None = None,
    description: str = "",
) -> ExecutorImage:
    """A local executor: the command runs under bubblewrap with ``folder`` (holding ``img-man/``) visible."""
    _admin(user)
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if not argv:
        raise Invalid(_("A local executor needs a command."), code="invalid_command")
    root = Path(folder)
    if not root.is_absolute() or not root.is_dir():
        raise Invalid(_("The executor folder must be an existing absolute path."), code="invalid_folder")
    for path in binds or []:
        if not Path(path).is_absolute() or not Path(path).exists():
            raise Invalid(_("Every extra path must exist and be absolute: %(p)s") % {"p": path}, code="invalid_binds")
    manifest, templates = _read_local(root)
    try:
        return ExecutorImage.objects.create(
            name=_name(name),
            kind=ExecutorImage.Kind.LOCAL,
            command=argv,
            folder=str(root),
            binds=list(binds or []),
            description=description.strip(),
            manifest=manifest,
            templates=templates,
            state=ExecutorImage.State.READY,
            created_by=user,
        )
    except IntegrityError:
        raise Conflict(_("An executor with this name exists."), code="name_taken") from None


def _read_local(root: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    img_man = root / "img-man"
    files = {}
    if img_man.is_dir():
        for path in img_man.rglob("*.yaml"):
            if path.is_file() and path.stat().st_size <= IMG_MAN_LIMIT:
                files[str(path.relative_to(img_man))] = path.read_bytes()
    try:
        return read_manifest(files)
    except ContractError as exc:
        raise Invalid(str(exc), code="invalid_manifest") from None


def read_img_man(client: Any, reference: str) -> dict[str, bytes]:
    """The YAML files of ``/img-man``, read from a created (never started) container."""
    import docker.errors

    container = client.containers.create(reference, command=["/ymir-never-runs"], network_mode="none")
    try:
        try:
            chunks, _stat = container.get_archive("/img-man")
        except docker.errors.NotFound:
            return {}
        data = b"".join(chunks)
    finally:
        container.remove(force=True)
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive.getmembers():
            if not member.isfile() or member.size > IMG_MAN_LIMIT or not member.name.endswith(".yaml"):
                continue
            relative = member.name.split("/", 1)[1] if "/" in member.name else member.name
            extracted = archive.extractfile(member)
            if extracted is not None:
                files[relative] = extracted.read()
    return files


def image_inspect(image_id: int) -> str:
    """The pull task: make sure the image is here (pull it if not), then read its manifest and templates."""
    import docker
    import docker.errors

    image = ExecutorImage.objects.get(pk=image_id)
    task_id = image.conformance.get("pull_task")
    if task_id:
        task_begin(task_id)
    code, message = "", ""
    try:
        client = docker.DockerClient(base_url=settings.DOCKER_HOST or "unix:///var/run/docker.sock", timeout=120)
        try:
            client.images.get(image.reference)
        except docker.errors.ImageNotFound:
            client.images.pull(image.reference)
        manifest, templates = read_manifest(read_img_man(client, image.reference))
    except ContractError as exc:
        code, message = "image_invalid", str(exc)
    except docker.errors.DockerException as exc:
        code, message = "image_missing", _("The image cannot be found or pulled: %(e)s") % {"e": str(exc)[:500]}
    if code:
        ExecutorImage.objects.filter(pk=image_id).update(state=ExecutorImage.State.ERROR, error_message=message)
    else:
        ExecutorImage.objects.filter(pk=image_id).update(
            state=ExecutorImage.State.READY, error_message="", manifest=manifest, templates=templates
        )
    if task_id:
        task_finish(
            task_id, state=Task.State.ERROR if code else Task.State.DONE, error_code=code, error_message=message
        )
    return code or "ready"


def image_update(
    *,
    user: User,
    image: ExecutorImage,
    name: str,
    description: str,
    is_shared: bool,
    related: list[ExecutorImage] | None = None,
) -> ExecutorImage:
    _admin(user)
    image.name = _name(name)
    image.description = description.strip()
    image.is_shared = is_shared
    try:
        with transaction.atomic():
            image.save(update_fields=["name", "description", "is_shared"])
            if related is not None:
                image.related.set([r for r in related if r.pk != image.pk])
    except IntegrityError:
        raise Conflict(_("An executor with this name exists."), code="name_taken") from None
    return image


def image_copy(*, user: User, image: ExecutorImage, name: str, description: str = "") -> ExecutorImage:
    _admin(user)
    try:
        copy = ExecutorImage.objects.create(
            name=_name(name),
            description=description.strip() or image.description,
            kind=image.kind,
            reference=image.reference,
            command=image.command,
            folder=image.folder,
            binds=image.binds,
            state=image.state,
            error_message=image.error_message,
            manifest=image.manifest,
            templates=image.templates,
            created_by=user,
        )
    except IntegrityError:
        raise Conflict(_("An executor with this name exists."), code="name_taken") from None
    copy.related.set(image.related.all())
    return copy


def image_delete(*, user: User, image: ExecutorImage) -> None:
    _admin(user)
    if Task.objects.filter(image=image).exists():
        raise Conflict(_("This executor has run tasks and cannot be deleted; copy or edit it instead."), code="in_use")
    image.delete()


DETECTOR_NAME = "ymir-detector"


def detector_register() -> ExecutorImage | None:
    """Register (or refresh) the default detector as a shared local executor; None when its environment is
    missing (``./ymir.sh start`` builds it)."""
    python = settings.YMIR_DETECTOR_PYTHON
    if not python or not Path(python).exists():
        return None
    folder = Path(settings.YMIR_DETECTOR_FOLDER)
    manifest, templates = _read_local(folder)
    venv = Path(python).parent.parent
    base = Path(python).resolve().parent.parent
    binds = [str(venv)] + ([str(base)] if not base.is_relative_to("/usr") and base != venv else [])
    image, _created = ExecutorImage.objects.update_or_create(
        name=DETECTOR_NAME,
        defaults={
            "kind": ExecutorImage.Kind.LOCAL,
            "command": [python, "-m", "ymir_detector"],
            "folder": str(folder),
            "binds": binds,
            "manifest": manifest,
            "templates": templates,
            "state": ExecutorImage.State.READY,
            "error_message": "",
            "is_shared": True,
            "description": "The built-in detector (CenterNet-style, PyTorch on CPU, ONNX export).",
        },
    )
    return image
