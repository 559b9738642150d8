from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class Task(models.Model):
    """The one table that is the truth about every job the platform runs."""

    class Kind(models.TextChoices):
        IMPORT = "import", _("Import")
        COPY = "copy", _("Copy")
        MERGE = "merge", _("Merge")
        FILTER = "filter", _("Filter")
        EXCLUDE = "exclude", _("Exclude")
        SAMPLE = "sample", _("Sample")
        SPLIT = "split", _("Split")
        EXPORT = "export", _("Export")
        TRAINING = "training", _("Training")
        MINING = "mining", _("Mining")
        INFERENCE = "inference", _("Inference")
        EVALUATION = "evaluation", _("Evaluation")
        LABELLING = "labelling", _("Labelling")
        IMAGE_PULL = "image_pull", _("Image pull")
        CONFORMANCE = "conformance", _("Conformance check")
        PING = "ping", _("Ping")

    class State(models.TextChoices):
        PENDING = "pending", _("Pending")
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        ERROR = "error", _("Error")
        TERMINATED = "terminated", _("Terminated")

    FINAL_STATES = (State.DONE, State.ERROR, State.TERMINATED)

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="tasks")
    project = models.ForeignKey(
        "projects.Project", on_delete=models.PROTECT, null=True, blank=True, related_name="tasks"
    )
    kind = models.CharField(_("type"), max_length=20, choices=Kind.choices)
    state = models.CharField(_("state"), max_length=12, choices=State.choices, default=State.PENDING)
    percent = models.FloatField(default=0.0)
    parameters = models.JSONField(default=dict, blank=True)
    error_code = models.CharField(max_length=32, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Executor runs (training, mining, inference, conformance checks).
    image = models.ForeignKey(
        "models_app.ExecutorImage", on_delete=models.PROTECT, null=True, blank=True, related_name="tasks"
    )
    runner = models.CharField(max_length=8, blank=True)
    run_ref = models.CharField(max_length=100, blank=True)
    host = models.CharField(max_length=100, blank=True)
    gpu_count = models.PositiveSmallIntegerField(default=0)
    gpu_ids = models.CharField(max_length=100, blank=True)
    config = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    log_tail = models.TextField(blank=True)
    deliveries = models.PositiveSmallIntegerField(default=0)
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    queued_at = models.DateTimeField(null=True, blank=True)
    monitor_at = models.FloatField(default=0.0)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "-created_at"]), models.Index(fields=["state"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(percent__gte=0) & models.Q(percent__lte=1), name="task_percent_0_1"
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk}"

    @property
    def is_final(self) -> bool:
        return self.state in self.FINAL_STATES


class ExecutorImage(models.Model):
    """An executor: a container image (Docker runner) or a local program (local runner) speaking the contract."""

    class Kind(models.TextChoices):
        DOCKER = "docker", _("Container image")
        LOCAL = "local", _("Local program")

    class State(models.TextChoices):
        PENDING = "pending", _("Pending")
        READY = "ready", _("Ready")
        ERROR = "error", _("Error")

    TASK_TYPES = ("training", "mining", "infer")

    name = models.CharField(_("name"), max_length=100, unique=True)
    description = models.TextField(_("description"), blank=True, max_length=2000)
    kind = models.CharField(_("kind"), max_length=8, choices=Kind.choices, default=Kind.DOCKER)
    reference = models.CharField(_("image reference"), max_length=255, blank=True)
    command = models.JSONField(_("command"), default=list, blank=True)
    folder = models.CharField(_("executor folder"), max_length=500, blank=True)
    binds = models.JSONField(default=list, blank=True)
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    error_message = models.TextField(blank=True)
    manifest = models.JSONField(default=dict, blank=True)
    templates = models.JSONField(default=dict, blank=True)
    is_shared = models.BooleanField(_("shared"), default=False)
    related = models.ManyToManyField("self", symmetrical=False, blank=True, related_name="related_from")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    conformance = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def task_types(self) -> list[str]:
        return [kind for kind in self.TASK_TYPES if kind in self.templates]

    @property
    def wants_network(self) -> bool:
        return bool(self.manifest.get("network") or self.manifest.get("enable_network"))


class WorkerHost(models.Model):
    """A worker host and the GPUs it declares (``YMIR_WORKER_GPUS``); seen alive at ``last_seen``."""

    name = models.CharField(max_length=100, unique=True)
    gpus = models.JSONField(default=list, blank=True)
    last_seen = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class GpuLease(models.Model):
    """One GPU of one host held by one task until ``expires_at`` (renewed while the run is followed)."""

    host = models.CharField(max_length=100)
    gpu = models.CharField(max_length=16)
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="gpu_leases")
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["host", "gpu"], name="gpu_lease_one_holder")]

    def __str__(self) -> str:
        return f"{self.host}:{self.gpu}"


class ModelGroup(models.Model):
    """A named line of models in a project; each training run adds a version."""

    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="model_groups")
    name = models.CharField(_("name"), max_length=100)
    description = models.TextField(_("description"), blank=True, max_length=2000)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint("project", Lower("name"), name="modelgroup_project_name_ci_unique")]

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    """One trained (or imported) model: its files live under ``models/<id>/`` in the workspace, by stage."""

    group = models.ForeignKey(ModelGroup, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    task = models.ForeignKey(Task, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    image = models.ForeignKey(ExecutorImage, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    train_version = models.ForeignKey(
        "datasets.DatasetVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="trained_models"
    )
    val_version = models.ForeignKey(
        "datasets.DatasetVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="validated_models"
    )
    class_names = models.JSONField(default=list)
    config = models.JSONField(default=dict, blank=True)
    recommended_stage = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint("group", "number", name="modelversion_group_number_unique")]

    def __str__(self) -> str:
        return f"{self.group.name} v{self.number}"


class ModelStage(models.Model):
    """A checkpoint of a model version: its files (relative to the version's folder) and its metrics."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="stages")
    name = models.CharField(max_length=100)
    files = models.JSONField(default=list)
    reported_map = models.FloatField(_("mAP reported by the image"), null=True, blank=True)
    timestamp = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["version", "name"]
        constraints = [models.UniqueConstraint("version", "name", name="modelstage_version_name_unique")]

    def __str__(self) -> str:
        return f"{self.version} / {self.name}"


class Evaluation(models.Model):
    """A ground-truth dataset version evaluated against some of its prediction sets, with stored results."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="evaluations")
    version = models.ForeignKey("datasets.DatasetVersion", on_delete=models.CASCADE, related_name="evaluations")
    prediction_sets = models.ManyToManyField("datasets.PredictionSet", related_name="evaluations")
    task = models.OneToOneField(Task, on_delete=models.SET_NULL, null=True, blank=True, related_name="evaluation")
    parameters = models.JSONField(default=dict)
    result = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Evaluation #{self.pk}"
