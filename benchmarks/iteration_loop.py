"""The seed-002 story through the platform's own loop: does mining beat random picking, round after round?

Synthetic Lego-like data: ``--train`` labelled images, a ``--pool``-image unlabelled pool (its hidden ground
truth answers the oracle labeller), a ``--val``-image validation set. Each seed runs one iteration with the
random control on: every round the mined arm mines ``--add`` images with the last model (``--strategy``),
the control samples as many at random from the same prepared pool; both are labelled by the oracle, merged,
and retrained from their previous model the same way. As in seed 002, the loop starts from a good model:
each seed first trains an initial model on the training set for ``--initial-epochs``. The platform evaluates
every stage on the validation set; the best stage's mAP50 per round is reported for both arms, and the uplift
(mined - random), the baseline measured in the same run. Steps are started as a user would (``auto_mined``),
runs go through a real Celery worker, the local runner and the built-in detector.

    DATABASE_URL=postgres://... .venv/bin/python benchmarks/iteration_loop.py \\
        [--train 100 --pool 1181 --add 20 --rounds 4 --seeds 3 --val 100 --epochs 10 --size 160 \\
         --initial-epochs 40]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _setup import ROOT, django_on_scratch_database


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=100)
    parser.add_argument("--pool", type=int, default=1181)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--add", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument(
        "--initial-epochs",
        type=int,
        default=40,
        help="train each seed's initial model this long first (seed 002 starts from a good model); "
        "0: the loop's round 0 trains it with --epochs",
    )
    parser.add_argument("--strategy", default="aldd")
    parser.add_argument(
        "--tail",
        action="store_true",
        help="long-tailed classes in every set (datasets.demo.TAIL_WEIGHTS: beams and slopes rare)",
    )
    parser.add_argument("--class-balance", action="store_true", help="the mining step favours rare classes")
    parser.add_argument("--diversity", action="store_true", help="the mining step skips near-duplicates")
    parser.add_argument(
        "--scene",
        choices=("field", "lab"),
        default="field",
        help="the pool's and validation set's scene (datasets.demo); the training set is always 'lab'",
    )
    args = parser.parse_args()
    os.environ["YMIR_ORACLE_LABELLER"] = "1"
    os.environ["YMIR_FOLLOW_SECONDS"] = "1"
    django_on_scratch_database()
    from django.db import connection

    from core.models import User
    from datasets.models import DatasetVersion
    from datasets.services import demo_classes_ensure, demo_import_start
    from iterations import services as loop
    from iterations.models import Iteration
    from models_app import jobs
    from models_app.executors import detector_register
    from models_app.jobs import host_name, host_queue
    from models_app.models import ModelVersion, Task
    from projects.models import Project
    from ymir.celery import queues_purge

    queues_purge(["ymir", host_queue(host_name())])  # a fresh database: an earlier run's follow-ups name its ids
    env = {**os.environ, "YMIR_DB_CONN_MAX_AGE": "0"}
    if connection.vendor == "sqlite":
        env["YMIR_SQLITE_PATH"] = str(connection.settings_dict["NAME"])
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "ymir",
            "worker",
            "--pool",
            "solo",
            "-Q",
            f"ymir,{host_queue(host_name())}",
            "--loglevel",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        user = User.objects.create_user(username="bench_loop")
        demo_classes_ensure(user)
        data = Project.objects.create(owner=user, name="data")

        def imported(name: str, count: int, start: int, gt: bool = True, scene: str = "lab") -> DatasetVersion:
            version = demo_import_start(
                user=user,
                project=data,
                name=name,
                count=count,
                seed=2,
                start=start,
                gt=gt,
                scene=scene,
                tail=args.tail,
            )
            # the worker imports it (the task was queued); running it here as well would race that run
            while DatasetVersion.objects.get(pk=version.pk).state == DatasetVersion.State.PENDING:
                time.sleep(1)  # a benchmark's polling
            DatasetVersion.objects.filter(pk=version.pk).update(is_public=True)
            return DatasetVersion.objects.get(pk=version.pk, state=DatasetVersion.State.READY)

        started = time.perf_counter()
        train = imported("train", args.train, 0)
        val = imported("val", args.val, 50_000, scene=args.scene)
        pool = imported("pool", args.pool, 10_000, gt=False, scene=args.scene)
        hidden = imported("pool-gt", args.pool, 10_000, scene=args.scene)
        print(
            f"data: {args.train} train (lab), {args.pool} pool and {args.val} val ({args.scene}"
            f"{', long-tailed classes' if args.tail else ''}) imported in {time.perf_counter() - started:.0f} s"
        )
        image = detector_register()
        assert image is not None
        config = {"epochs": args.epochs, "image_size": args.size, "save_every_epochs": args.epochs, "mosaic": 0.0}
        table: dict[str, dict[int, list[float]]] = {"mined": {}, "random": {}}
        for seed in range(args.seeds):
            project = Project.objects.create(owner=user, name=f"seed {seed}")
            initial = None
            if args.initial_epochs:
                t0 = time.perf_counter()
                task = jobs.job_submit(
                    user=user,
                    image=image,
                    task_type="training",
                    class_names=sorted(train.class_counts.get("gt", {})),
                    project=project,
                    train=train,
                    val=val,
                    user_config={
                        **config,
                        "epochs": args.initial_epochs,
                        "save_every_epochs": args.initial_epochs,
                        "seed": seed,
                    },
                    model_name="initial",
                )
                while Task.objects.get(pk=task.pk).state not in ("done", "error", "cancelled"):
                    time.sleep(2)  # a benchmark's polling
                task.refresh_from_db()
                if task.state != "done":
                    raise SystemExit(f"initial training: {task.error_code} {task.error_message}")
                initial = ModelVersion.objects.get(pk=task.result["landed"]["model_version"]).stages.get(name="best")
                print(f"seed {seed}: initial model, {args.initial_epochs} epochs in {time.perf_counter() - t0:.0f} s")
            iteration = loop.iteration_create(
                user=user,
                project=project,
                name=f"s{seed}",
                train_version=train,
                pool_version=pool,
                val_version=val,
                initial_stage=initial,
                training_image=image,
                mining_image=image,
                class_names=sorted(train.class_counts.get("gt", {})),
                strategy=args.strategy,
                top_k=args.add,
                class_balance=args.class_balance,
                diversity=args.diversity,
                training_config={**config, "seed": seed},
                max_rounds=args.rounds,
                random_control=True,
                seed=seed,
                oracle_version=hidden,
            )
            t0 = time.perf_counter()
            while Iteration.objects.get(pk=iteration.pk).state == Iteration.State.ITERATING:
                loop.auto_mined(iteration.pk)
                loop.iteration_advance(iteration.pk)
                for round_ in iteration.rounds.all():
                    if round_.message and "error" in round_.message.lower():
                        raise SystemExit(round_.message)
                time.sleep(2)  # a benchmark's polling, as the beat would
            for row in loop.history(iteration):
                r = row["round"]
                if row["val50"] is not None:
                    table[r.arm].setdefault(r.number, []).append(row["val50"])
                    print(f"  seed {seed} round {r.number} {r.arm:6s} mAP50 {row['val50']:.3f}")
            if args.scene == "field":
                picked_conditions(iteration)
            if args.tail:
                picked_rare(iteration)
            print(f"seed {seed}: {args.rounds} rounds in {time.perf_counter() - t0:.0f} s", flush=True)
        print(
            f"\nmAP50 on the validation set (mean of {args.seeds} seeds; strategy {args.strategy}, "
            f"{args.add} per round)"
        )
        print("round | mined | random | uplift (points)")
        means = {}
        for n in sorted(table["mined"]):
            mined = statistics.mean(table["mined"][n])
            rnd = statistics.mean(table["random"][n]) if n in table["random"] else mined
            means[n] = (mined, rnd)
            print(f"{n:5d} | {mined:.3f} | {rnd:.3f} | {100 * (mined - rnd):+.1f}")
        rounds = sorted(means)
        rises = all(means[b][0] > means[a][0] for a, b in itertools.pairwise(rounds))
        last = rounds[-1]
        print(
            f"mined mAP50 rises every round: {rises}; uplift at round {last}: "
            f"{100 * (means[last][0] - means[last][1]):+.1f} points (target >= +3.0)"
        )
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def picked_conditions(iteration: Any) -> None:
    """What each arm picked from the field pool, by the demo's hidden condition of each image (lab-like, empty,
    dim, small, crowded): does mining go where the model is weak?"""
    from collections import Counter

    from datasets.demo import FIELD_CONDITIONS, field_condition

    for round_ in iteration.rounds.order_by("number", "arm"):
        if round_.picked is None:
            continue
        counts: Counter[str] = Counter()
        for name in round_.picked.items.values_list("name", flat=True):
            _lego, seed, index = Path(name).stem.split("_")
            counts[field_condition(int(seed), int(index))] += 1
        shown = " ".join(f"{c} {counts[c]}" for c in FIELD_CONDITIONS)
        print(f"  round {round_.number} {round_.arm:6s} picked: {shown}")


def picked_rare(iteration: Any) -> None:
    """How many boxes of the rarest classes each arm's picks held (the oracle's labels): with long-tailed
    classes, does mining find the rare parts that random picking mostly misses?"""
    from datasets.demo import TAIL_WEIGHTS
    from datasets.models import Box

    rare = sorted(TAIL_WEIGHTS, key=TAIL_WEIGHTS.__getitem__)[:3]
    for round_ in iteration.rounds.order_by("number", "arm"):
        if round_.labelled_id is None:
            continue
        boxes = Box.objects.filter(version_id=round_.labelled_id, prediction_set__isnull=True)
        counts = {name: boxes.filter(label__name=name).count() for name in rare}
        shown = " ".join(f"{name} {n}" for name, n in counts.items())
        print(f"  round {round_.number} {round_.arm:6s} rare boxes picked: {shown} (of {boxes.count()})")


if __name__ == "__main__":
    main()
