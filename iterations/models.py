"""The guided data-centric loop: a project's iteration settings and its rounds (mine, label, merge, train)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class Iteration(models.Model):
    """A project's loop: the fixed validation set, the pool to mine, the images, and when to stop."""

    class State(models.TextChoices):
        ITERATING = "iterating", _("Iterating")
        FINISHED = "finished", _("Finished")

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="iterations")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    name = models.CharField(_("name"), max_length=60)
    state = models.CharField(max_length=12, choices=State.choices, default=State.ITERATING)
    train_version = models.ForeignKey("datasets.DatasetVersion", on_delete=models.PROTECT, related_name="+")
    pool_version = models.ForeignKey("datasets.DatasetVersion", on_delete=models.PROTECT, related_name="+")
    val_version = models.ForeignKey("datasets.DatasetVersion", on_delete=models.PROTECT, related_name="+")
    test_versions = models.ManyToManyField("datasets.DatasetVersion", blank=True, related_name="+")
    initial_stage = models.ForeignKey(
        "models_app.ModelStage", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    training_image = models.ForeignKey("models_app.ExecutorImage", on_delete=models.PROTECT, related_name="+")
    mining_image = models.ForeignKey("models_app.ExecutorImage", on_delete=models.PROTECT, related_name="+")
    class_names = models.JSONField(default=list)
    strategy = models.CharField(max_length=30, default="entropy")
    exclude_seen = models.BooleanField(default=True)
    chunk_size = models.PositiveIntegerField(default=0)  # mine a random chunk of the pool each round (0: all)
    top_k = models.PositiveIntegerField(default=20)
    # the mining step's platform-side options (models_app.mining): favour classes rare in the training set,
    # skip near-duplicate images
    class_balance = models.BooleanField(default=False)
    diversity = models.BooleanField(default=False)
    training_config = models.JSONField(default=dict, blank=True)
    mining_config = models.JSONField(default=dict, blank=True)
    target_map = models.FloatField(null=True, blank=True)
    max_rounds = models.PositiveSmallIntegerField(null=True, blank=True)
    random_control = models.BooleanField(default=False)
    seed = models.IntegerField(default=0)
    # tests and benchmarks only (YMIR_ORACLE_LABELLER): labels come from this hidden ground truth
    oracle_version = models.ForeignKey(
        "datasets.DatasetVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name


class Round(models.Model):
    """One round of one arm (the mined one, or the random control beside it): five steps and their outputs."""

    class Arm(models.TextChoices):
        MINED = "mined", _("Mining")
        RANDOM = "random", _("Random control")

    iteration = models.ForeignKey(Iteration, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveSmallIntegerField()
    arm = models.CharField(max_length=8, choices=Arm.choices, default=Arm.MINED)
    base_train = models.ForeignKey("datasets.DatasetVersion", on_delete=models.PROTECT, related_name="+")
    base_stage = models.ForeignKey(
        "models_app.ModelStage", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    prepared = models.ForeignKey(
        "datasets.DatasetVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    pick_task = models.ForeignKey("models_app.Task", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    picked = models.ForeignKey(
        "datasets.DatasetVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    labelling = models.ForeignKey(
        "datasets.Labelling", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    labelled = models.ForeignKey(
        "datasets.DatasetVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    merged = models.ForeignKey(
        "datasets.DatasetVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    training_task = models.ForeignKey(
        "models_app.Task", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    model = models.ForeignKey(
        "models_app.ModelVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    best_stage = models.ForeignKey(
        "models_app.ModelStage", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    skipped = models.JSONField(default=list, blank=True)
    settings = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["iteration", "number", "arm"]
        constraints = [models.UniqueConstraint("iteration", "number", "arm", name="round_iteration_number_arm_unique")]

    def __str__(self) -> str:
        return f"{self.iteration} round {self.number} ({self.arm})"
