"""Labelling round trip against a real Label Studio: what the platform adds over Label Studio's own API.

Sending: Label Studio importing N tasks (image URL + the ground truth as a pre-annotation, batches of 200) made
straight through its API is the baseline; the platform's push (project, webhook, signed URLs, the same import,
then mapping every task back to its image) is measured against it. Importing: Label Studio's JSON export alone
is the baseline; the platform's import (that export, class mapping, clipping, a new version written in one
transaction) against it. Each image has 6 ground-truth boxes; every task gets one annotation of 6 boxes.

    YMIR_LABEL_STUDIO_URL=http://127.0.0.1:8080 YMIR_LABEL_STUDIO_TOKEN=... \\
    DATABASE_URL=postgres://... .venv/bin/python benchmarks/labelling_roundtrip.py [--images 500]
"""

from __future__ import annotations

import argparse
import os
import time

from _setup import django_on_scratch_database


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    if not os.environ.get("YMIR_LABEL_STUDIO_URL"):
        raise SystemExit("set YMIR_LABEL_STUDIO_URL and YMIR_LABEL_STUDIO_TOKEN (./ymir.sh label-studio starts one)")
    django_on_scratch_database()
    from analysis_speed import make_version

    from core.models import User
    from datasets import labelling as service
    from datasets.importer import version_counts
    from datasets.models import Box, DatasetVersion, LabelClass, Labelling

    n = args.images
    version = DatasetVersion.objects.get(pk=make_version(n, seed=3))
    DatasetVersion.objects.filter(pk=version.pk).update(**version_counts(version))
    version.refresh_from_db()
    user = User.objects.get(username="bench_user")
    labels = list(LabelClass.objects.order_by("name"))
    client = service.tool_client()
    print(f"Label Studio {client.version()} at {client.url}; {n} images, 6 boxes each")

    # baseline: the same tasks straight into Label Studio
    labelling = service.labelling_create(
        user=user,
        version=version,
        class_names=[label.name for label in labels],
        keep_ground_truth=True,
        base_url="http://127.0.0.1:9",
    )
    items = list(labelling.items.select_related("asset").order_by("id"))
    payload = service._tasks_for(labelling, items, {label.pk for label in labels})
    start = time.perf_counter()
    raw = client.project_create(title="bench raw", label_config=service.label_config(labels), instruction="")
    for i in range(0, n, service.IMPORT_BATCH):
        client.tasks_import(raw["id"], payload[i : i + service.IMPORT_BATCH])
    raw_tasks = list(client.tasks(raw["id"]))
    t_raw = time.perf_counter() - start
    assert len(raw_tasks) == n

    start = time.perf_counter()
    assert service.labelling_push(labelling.pk) == "sent"
    t_push = time.perf_counter() - start
    labelling.refresh_from_db()
    project_id = labelling.ls_project_id
    assert project_id is not None
    print(
        f"send    : Label Studio API alone {t_raw:6.2f} s · platform push {t_push:6.2f} s · ratio {t_push / t_raw:.2f}x"
    )

    # every task gets an annotation (6 boxes, one partly outside)
    start = time.perf_counter()
    for task in client.tasks(project_id):
        regions = [
            {
                "from_name": "label",
                "to_name": "image",
                "type": "rectanglelabels",
                "value": {
                    "x": 15.0 * k,
                    "y": 10.0,
                    "width": 30,
                    "height": 30,
                    "rotation": 0,
                    "rectanglelabels": [labels[k % len(labels)].name],
                },
            }
            for k in range(6)
        ]
        client.annotation_create(int(task["id"]), regions)
    t_annotate = time.perf_counter() - start
    print(f"annotate: {n} annotations through Label Studio's API in {t_annotate:.1f} s (the labellers' part)")

    start = time.perf_counter()
    exported = client.export(project_id)
    t_export = time.perf_counter() - start
    assert len(exported) == n
    service._map_tasks(client, labelling)
    start = time.perf_counter()
    new = service.labelling_collect(labelling.pk)
    t_collect = time.perf_counter() - start
    assert new is not None and new.asset_count == n
    boxes = Box.objects.filter(version=new).count()
    print(
        f"import  : Label Studio export alone {t_export:6.2f} s · platform import {t_collect:6.2f} s · "
        f"ratio {t_collect / t_export:.2f}x ({boxes} boxes, {new.report['clipped_boxes']} clipped)"
    )
    start = time.perf_counter()
    again = service.labelling_collect(labelling.pk)
    t_again = time.perf_counter() - start
    assert again is None
    print(f"again   : nothing new, no version, {t_again:.2f} s ({t_again / t_export:.2f}x the export)")
    Labelling.objects.filter(pk=labelling.pk).delete()


if __name__ == "__main__":
    main()
