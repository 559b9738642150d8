"""Our COCO evaluator against pycocotools: all 12 summary numbers, the precision/recall arrays, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from models_app.evaluator import Boxes, class_ap, evaluate
from tests.coco_reference import random_case, reference


def assert_same(gt: Boxes, dt: Boxes, n_images: int, n_classes: int, **kw) -> None:
    ours = evaluate(gt, dt, n_classes=n_classes, **kw)
    ref = reference(gt, dt, n_images, n_classes, **kw)
    np.testing.assert_allclose(ours.precision, ref.eval["precision"], atol=1e-12)
    np.testing.assert_allclose(ours.recall, ref.eval["recall"], atol=1e-12)
    np.testing.assert_allclose(ours.scores, ref.eval["scores"], atol=1e-12)
    np.testing.assert_allclose(ours.stats_list(), ref.stats, atol=1e-6)


@pytest.mark.parametrize("seed", range(24))
def test_matches_pycocotools_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    n_images, n_classes = int(rng.integers(1, 60)), int(rng.integers(1, 6))
    gt, dt = random_case(
        rng,
        n_images=n_images,
        n_classes=n_classes,
        gt_per_image=float(rng.uniform(0, 6)),
        dt_per_image=float(rng.uniform(0, 9)),
        ties=seed % 2 == 1,
        unknown_classes=seed % 3 == 0,
    )
    assert_same(gt, dt, n_images, n_classes)


def test_more_than_max_dets_per_image_are_cut_as_pycocotools_does():
    rng = np.random.default_rng(99)
    gt, dt = random_case(rng, n_images=3, n_classes=1, gt_per_image=30, dt_per_image=140, ties=True)
    assert np.bincount(dt.image).max() > 100
    assert_same(gt, dt, 3, 1)


E = np.zeros((0, 4))
EDGE_CASES = {
    "no predictions": (Boxes([0, 1], [0, 1], [[0, 0, 10, 10], [5, 5, 20, 20]]), Boxes([], [], E, []), 3, 2),
    "no ground truth": (Boxes([], [], E), Boxes([0], [0], [[0, 0, 10, 10]], [0.5]), 2, 2),
    "empty images": (
        Boxes([1], [0], [[0, 0, 10, 10]]),
        Boxes([1, 1], [0, 0], [[0, 0, 10, 10], [0, 0, 10, 11]], [0.9, 0.8]),
        5,
        1,
    ),
    "ties in score and IoU": (
        Boxes([0, 0, 1], [0, 0, 0], [[0, 0, 10, 10]] * 3),
        Boxes([0, 0, 0, 1, 1], [0] * 5, [[0, 0, 10, 10]] * 5, [0.5] * 5),
        2,
        1,
    ),
    "boxes touching borders": (
        Boxes([0, 0], [0, 0], [[0, 0, 10, 10], [10, 0, 10, 10]]),
        Boxes([0, 0], [0, 0], [[5, 0, 5, 10], [10, 0, 10, 10]], [0.3, 0.3]),
        1,
        1,
    ),
    "areas on range edges": (
        Boxes([0, 0, 0], [0, 0, 0], [[0, 0, 32, 32], [0, 0, 96, 96], [100, 100, 31.9, 32]]),
        Boxes([0, 0, 0], [0, 0, 0], [[0, 0, 32, 32], [0, 0, 96, 96], [100, 100, 32, 32]], [0.9, 0.8, 0.7]),
        1,
        1,
    ),
    "a class with no ground truth": (
        Boxes([0], [0], [[0, 0, 10, 10]]),
        Boxes([0, 0], [0, 1], [[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.95]),
        1,
        2,
    ),
    "zero-area boxes": (
        Boxes([0, 0], [0, 0], [[5, 5, 0, 0], [0, 0, 10, 10]]),
        Boxes([0, 0], [0, 0], [[5, 5, 0, 0], [0, 0, 10, 10]], [0.9, 0.8]),
        1,
        1,
    ),
}


@pytest.mark.parametrize("name", EDGE_CASES)
def test_matches_pycocotools_on_edge_cases(name):
    assert_same(*EDGE_CASES[name])


@pytest.mark.parametrize("ious", [[0.5], [0.3, 0.5, 0.75]])
def test_custom_iou_thresholds(ious):
    gt, dt = random_case(np.random.default_rng(7), n_images=30, n_classes=3, gt_per_image=4, dt_per_image=6, ties=True)
    assert_same(gt, dt, 30, 3, ious=ious)


def test_custom_max_dets_give_ap_at_the_largest_where_pycocotools_gives_minus_one():
    """pycocotools computes its first summary number at a literal 100 detections: with other maxDets it is -1.
    We take the largest maxDets there, as it does for every other AP; the arrays and the rest agree."""
    gt, dt = random_case(np.random.default_rng(8), n_images=30, n_classes=3, gt_per_image=4, dt_per_image=6)
    ours = evaluate(gt, dt, n_classes=3, max_dets=(1, 5, 20))
    ref = reference(gt, dt, 30, 3, max_dets=(1, 5, 20))
    np.testing.assert_allclose(ours.precision, ref.eval["precision"], atol=1e-12)
    np.testing.assert_allclose(ours.stats_list()[1:], ref.stats[1:], atol=1e-6)
    assert ref.stats[0] == -1 and ours.stats["AP"] > 0


def test_a_perfect_detector_scores_one_and_unknown_classes_are_counted():
    gt = Boxes([0, 0, 1], [0, 1, 0], [[0, 0, 50, 50], [60, 60, 100, 100], [10, 10, 20, 20]])
    dt = Boxes(
        [0, 0, 1, 1], [0, 1, 0, 7], [[0, 0, 50, 50], [60, 60, 100, 100], [10, 10, 20, 20], [0, 0, 5, 5]], [1] * 4
    )
    ev = evaluate(gt, dt, n_classes=2)
    assert ev.stats["AP"] == pytest.approx(1.0) and ev.stats["AP50"] == pytest.approx(1.0)
    assert ev.unknown_class_detections == 1
    assert list(class_ap(ev)) == pytest.approx([1.0, 1.0])
    # matched boxes point at each other
    assert list(ev.matching.dt_gt[0, 0]) == [0, 1, 2]
    assert ev.matching.gt_matched[0, 0].all()


def test_input_order_of_images_does_not_change_the_numbers():
    rng = np.random.default_rng(3)
    gt, dt = random_case(rng, n_images=20, n_classes=2, gt_per_image=3, dt_per_image=4)
    shuffled = rng.permutation(len(dt))
    with_scores = dt.take(shuffled)
    # distinct scores: a different input order may only change the order of exact ties
    assert evaluate(gt, dt, n_classes=2).stats == pytest.approx(evaluate(gt, with_scores, n_classes=2).stats)
