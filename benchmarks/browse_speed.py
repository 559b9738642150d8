"""Browsing: a page deep in a 1,000,000-image version costs about what a page of a 10,000-image one does.

Rows are made in SQL (one box per image). Each figure is the best of several renders of the dataset page
through Django's test client (the whole view: filters, the keyset page, its boxes, the template).

    .venv/bin/python benchmarks/browse_speed.py [--sizes 10000 1000000]
"""

from __future__ import annotations

import argparse
import time

from _setup import django_on_scratch_database


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    args = parser.parse_args()
    django_on_scratch_database()
    from analysis_speed import make_version
    from django.test import Client

    from core.models import User
    from datasets.models import DatasetAsset

    def render(client: Client, url: str) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            response = client.get(url)
            best = min(best, time.perf_counter() - started)
            assert response.status_code == 200
        return best

    results = {}
    for n in args.sizes:
        version_id = make_version(n, boxes_per_image=1)
        client = Client()
        client.force_login(User.objects.get(username="bench_user"))
        ids = DatasetAsset.objects.filter(version_id=version_id).order_by("id").values_list("id", flat=True)
        deep = ids[n - 100]  # near the end: an offset would read the whole version first
        first = render(client, f"/datasets/{version_id}/")
        last = render(client, f"/datasets/{version_id}/?after={deep}")
        results[n] = (first, last)
        print(f"{n:>8} images: first page {first * 1000:6.1f} ms   a page near the end {last * 1000:6.1f} ms")
    small, large = min(results), max(results)
    ratio = results[large][1] / results[small][1]
    print(f"deep page of {large} vs {small}: {ratio:.2f}x  (target <= 1.2)")


if __name__ == "__main__":
    main()
