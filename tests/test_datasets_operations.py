"""Set operations: new versions made in SQL, sharing assets, never copying image bytes."""

from __future__ import annotations

import pytest

from datasets import classes
from datasets.models import Asset, Box, DatasetAsset, DatasetVersion
from datasets.operations import overlap_count
from datasets.services import operation_run
from tests.conftest import api_as
from tests.datasets_util import import_now, jpeg, make_zip, voc
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(trainer, workspace, tmp_path):
    for name in ("red", "blue"):
        classes.class_create(user=trainer, name=name)
    project = ProjectFactory(owner=trainer)

    def dataset(name, images):
        files = {}
        for key, (colour, labels) in images.items():
            files[f"images/{key}.jpg"] = jpeg(colour=colour)
            files[f"gt/{key}.xml"] = voc(f"{key}.jpg", [(label, 1, 1, 9, 9) for label in labels])
        return import_now(trainer, project, name=name, upload=make_zip(tmp_path / f"{name}.zip", files))

    a = dataset("a", {"a1": ((10, 0, 0), ["red"]), "a2": ((20, 0, 0), ["blue"]), "shared": ((99, 99, 99), ["red"])})
    b = dataset("b", {"b1": ((0, 10, 0), ["blue", "blue"]), "shared": ((99, 99, 99), ["blue"])})
    return {"api": api_as(trainer), "a": a, "b": b, "project": project}


def _run(api, kind, body):
    response = api.post(f"/api/v1/datasets/{kind}", body)
    assert response.status_code == 202, response.content
    operation_run(response.json()["task_id"])
    return [DatasetVersion.objects.get(pk=i) for i in response.json()["ids"]]


def _shas(version):
    return set(DatasetAsset.objects.filter(version=version).values_list("asset__sha1", flat=True))


def _labels(version, sha):
    return sorted(Box.objects.filter(version=version, asset__sha1=sha).values_list("label__name", flat=True))


def test_merge_stops_on_shared_images_unless_a_preference_is_given(setup):
    api, a, b = setup["api"], setup["a"], setup["b"]
    assets_before = Asset.objects.count()
    (stopped,) = _run(api, "merge", {"name": "m-stop", "inputs": [a.pk, b.pk], "strategy": "stop"})
    assert stopped.state == "error" and stopped.report["error"]["details"]["shared_assets"] == 1
    assert not DatasetAsset.objects.filter(version=stopped).exists()
    (newer,) = _run(api, "merge", {"name": "m-new", "inputs": [a.pk, b.pk], "strategy": "newer"})
    (older,) = _run(api, "merge", {"name": "m-old", "inputs": [a.pk, b.pk], "strategy": "older"})
    shared = (_shas(a) & _shas(b)).pop()
    assert newer.asset_count == older.asset_count == 4
    assert _labels(newer, shared) == ["blue"] and _labels(older, shared) == ["red"]
    assert newer.gt_box_count == 1 + 1 + 2 + 1 and older.gt_box_count == 1 + 1 + 1 + 2
    assert set(newer.parents.values_list("id", flat=True)) == {a.pk, b.pk}
    assert Asset.objects.count() == assets_before


def test_filter_keeps_or_drops_images_by_class_and_aliases_count(setup, trainer):
    api, a = setup["api"], setup["a"]
    classes.class_add_alias(label=classes.LabelClass.objects.get(name="red"), alias="scarlet")
    (kept,) = _run(api, "filter", {"name": "f-keep", "inputs": [a.pk], "classes": ["scarlet"], "mode": "keep"})
    (dropped,) = _run(api, "filter", {"name": "f-drop", "inputs": [a.pk], "classes": ["red"], "mode": "drop"})
    assert kept.asset_count == 2 and kept.class_counts["gt"] == {"red": 2}
    assert dropped.asset_count == 1 and dropped.class_counts["gt"] == {"blue": 1}
    (none,) = _run(api, "filter", {"name": "f-pred", "inputs": [a.pk], "classes": ["red"], "on": "pred"})
    assert none.state == "ready" and none.asset_count == 0


def test_exclude_drops_images_present_elsewhere(setup):
    api, a, b = setup["api"], setup["a"], setup["b"]
    (result,) = _run(api, "exclude", {"name": "x", "inputs": [a.pk], "others": [b.pk]})
    assert _shas(result) == _shas(a) - _shas(b)
    assert overlap_count(a.pk, b.pk) == 1 and overlap_count(result.pk, b.pk) == 0


def test_sample_and_split_are_seeded_and_complete(setup, trainer, tmp_path):
    api, project = setup["api"], setup["project"]
    files = {f"images/{i}.jpg": jpeg(colour=(i * 12, 250 - i * 12, 100)) for i in range(20)}
    big = import_now(trainer, project, name="big", upload=make_zip(tmp_path / "big.zip", files))
    (s1,) = _run(api, "sample", {"name": "s1", "inputs": [big.pk], "count": 7, "seed": 3})
    (s2,) = _run(api, "sample", {"name": "s2", "inputs": [big.pk], "count": 7, "seed": 3})
    (s3,) = _run(api, "sample", {"name": "s3", "inputs": [big.pk], "ratio": 0.35, "seed": 4})
    assert s1.asset_count == 7 and _shas(s1) == _shas(s2) and s3.asset_count == 7 and _shas(s3) != _shas(s1)
    parts = _run(api, "split", {"name": "sp", "inputs": [big.pk], "ratios": [0.5, 0.3, 0.2], "seed": 1})
    assert [p.asset_count for p in parts] == [10, 6, 4]
    assert set.union(*(_shas(p) for p in parts)) == _shas(big)
    assert all(overlap_count(parts[i].pk, parts[j].pk) == 0 for i in range(3) for j in range(3) if i != j)
    assert [p.group.name for p in parts] == ["sp-1", "sp-2", "sp-3"]


@pytest.mark.parametrize(
    "kind, body, code",
    [
        ("merge", {"inputs": ["A"], "strategy": "stop"}, "no_inputs"),
        ("merge", {"inputs": ["A", "B"], "strategy": "bogus"}, "invalid_strategy"),
        ("filter", {"inputs": ["A"], "classes": []}, "no_classes"),
        ("filter", {"inputs": ["A"], "classes": ["purple"]}, "unknown_classes"),
        ("exclude", {"inputs": ["A"]}, "no_inputs"),
        ("sample", {"inputs": ["A"], "count": 2, "ratio": 0.5}, "invalid_sample"),
        ("sample", {"inputs": ["A"], "ratio": 1.5}, "invalid_sample"),
        ("split", {"inputs": ["A"], "ratios": [0.5, 0.6]}, "invalid_split"),
        ("split", {"inputs": ["A", "B"], "ratios": [0.5, 0.5]}, "invalid_inputs"),
    ],
)
def test_bad_operation_requests_are_refused_and_create_nothing(setup, kind, body, code):
    ids = {"A": setup["a"].pk, "B": setup["b"].pk}
    body = {**body, "name": "bad", "inputs": [ids[i] for i in body["inputs"]]}
    before = DatasetVersion.objects.count()
    response = setup["api"].post(f"/api/v1/datasets/{kind}", body)
    assert response.status_code == 422, response.content
    assert response.json()["error"]["code"] == code
    assert DatasetVersion.objects.count() == before


def test_operations_on_invisible_datasets_are_404(setup, tmp_path):
    other = ProjectFactory()
    theirs = import_now(other.owner, other, upload=make_zip(tmp_path / "o.zip", {"images/o.jpg": jpeg()}))
    response = setup["api"].post("/api/v1/datasets/sample", {"name": "steal", "inputs": [theirs.pk], "count": 1})
    assert response.status_code == 404
