"""Model packages: YMIR's tar.gz out and back in, and the packages that are refused with nothing written."""

from __future__ import annotations

import io
import tarfile

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile

from models_app.landing import model_dir
from models_app.models import ModelGroup, ModelStage, ModelVersion
from tests.conftest import api_as, logged_in
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db


def _model(project) -> ModelVersion:
    group = ModelGroup.objects.create(project=project, name="det")
    version = ModelVersion.objects.create(
        group=group, number=1, class_names=["cat", "dog"], config={"epochs": 3}, recommended_stage="epoch_2"
    )
    for name, payload in (("epoch_1", b"weights one"), ("epoch_2", b"weights two")):
        folder = model_dir(version.pk) / name
        folder.mkdir(parents=True)
        (folder / "model.pt").write_bytes(payload)
        ModelStage.objects.create(
            version=version, name=name, files=[f"{name}/model.pt"], reported_map=0.5, metrics={"AP": 0.4}
        )
    return version


def _tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


INFO = yaml.safe_dump(
    {
        "executor_config": {"class_names": ["cat"]},
        "stages": {"last": {"files": ["model.pt"], "mAP": 0.3, "timestamp": 1}},
        "best_stage_name": "last",
    }
).encode()


def test_export_and_import_round_trip(workspace):
    user = UserFactory()
    source = _model(ProjectFactory(owner=user))
    api = api_as(user)
    response = api.get(f"/api/v1/models/{source.pk}/package")
    assert response.status_code == 200 and response["Content-Type"] == "application/gzip"
    package = b"".join(response.streaming_content)
    with tarfile.open(fileobj=io.BytesIO(package)) as tar:
        info = yaml.safe_load(tar.extractfile("ymir-info.yaml").read())  # type: ignore[union-attr]
        assert tar.extractfile("epoch_2/model.pt").read() == b"weights two"  # type: ignore[union-attr]
    assert info["best_stage_name"] == "epoch_2" and info["executor_config"]["class_names"] == ["cat", "dog"]
    assert info["stages"]["epoch_1"] == {"files": ["model.pt"], "mAP": 0.4, "timestamp": 0}

    target = ProjectFactory(owner=user)
    response = api.post_multipart(
        f"/api/v1/projects/{target.pk}/models",
        {"package": SimpleUploadedFile("det.tar.gz", package), "name": "copied"},
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "copied" and body["class_names"] == ["cat", "dog"] and body["recommended_stage"] == "epoch_2"
    imported = ModelVersion.objects.get(pk=body["id"])
    assert (model_dir(imported.pk) / "epoch_1" / "model.pt").read_bytes() == b"weights one"
    assert sorted(s.name for s in imported.stages.all()) == ["epoch_1", "epoch_2"]


@pytest.mark.parametrize(
    ("members", "links", "code"),
    [
        ({"ymir-info.yaml": INFO, "last/model.pt": b"x", "../../evil.txt": b"x"}, None, "unsafe_path"),
        ({"ymir-info.yaml": INFO, "/etc/evil": b"x", "last/model.pt": b"x"}, None, "unsafe_path"),
        ({"ymir-info.yaml": INFO, "last/model.pt": b"x"}, {"last/link": "/etc/passwd"}, "unsafe_path"),
        ({"last/model.pt": b"x"}, None, "missing_info"),
        ({"ymir-info.yaml": b"!!python/object/apply:os.system ['id']", "last/model.pt": b"x"}, None, "invalid_info"),
        ({"ymir-info.yaml": INFO}, None, "invalid_info"),  # a stage whose files are missing
    ],
)
def test_bad_packages_are_refused_and_nothing_is_written(workspace, members, links, code):
    user = UserFactory()
    project = ProjectFactory(owner=user)
    response = api_as(user).post_multipart(
        f"/api/v1/projects/{project.pk}/models", {"package": SimpleUploadedFile("m.tar.gz", _tar(members, links))}
    )
    assert response.status_code == 422 and response.json()["error"]["code"] == code, response.content
    assert not ModelVersion.objects.exists()
    assert not (workspace / "models").exists() or not any((workspace / "models").iterdir())
    assert not (workspace.parent / "evil.txt").exists()


def test_not_a_package_and_not_a_graph_are_refused(workspace):
    user = UserFactory()
    project = ProjectFactory(owner=user)
    api = api_as(user)
    for name, data, code in (("m.tar.gz", b"plain text", "invalid_package"), ("m.onnx", b"garbage", "invalid_package")):
        response = api.post_multipart(
            f"/api/v1/projects/{project.pk}/models", {"package": SimpleUploadedFile(name, data)}
        )
        assert response.status_code == 422 and response.json()["error"]["code"] == code, response.content
    assert not ModelVersion.objects.exists()


def test_the_import_page_and_someone_elses_project(workspace):
    user = UserFactory()
    project = ProjectFactory(owner=user)
    client = logged_in(user)
    response = client.post(
        f"/projects/{project.pk}/models/import",
        {"package": SimpleUploadedFile("m.tar.gz", _tar({"ymir-info.yaml": INFO, "last/model.pt": b"w"})), "name": ""},
    )
    version = ModelVersion.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/models/{version.pk}/"
    assert version.group.name == "m" and version.recommended_stage == "last" and version.class_names == ["cat"]
    page = client.post(
        f"/projects/{project.pk}/models/import", {"package": SimpleUploadedFile("x.tar.gz", b"nope")}
    ).content.decode()
    assert "Not a model package" in page
    stranger = api_as(UserFactory())
    response = stranger.post_multipart(
        f"/api/v1/projects/{project.pk}/models", {"package": SimpleUploadedFile("m.tar.gz", b"x")}
    )
    assert response.status_code == 404
    assert stranger.get(f"/api/v1/models/{version.pk}/package").status_code == 404
