from __future__ import annotations

from django.conf import settings
from django.db import models
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
