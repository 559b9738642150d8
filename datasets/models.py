"""Classes, content-addressed assets, dataset groups and their immutable versions, boxes."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class LabelClass(models.Model):
    """A class of the label registry. Its main name and aliases are its keywords."""

    name = models.CharField(_("name"), max_length=100)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(Lower("name"), name="labelclass_name_ci_unique")]

    def __str__(self) -> str:
        return self.name


class LabelKeyword(models.Model):
    """Every name a class answers to (main name and aliases), unique across all classes regardless of case."""

    label = models.ForeignKey(LabelClass, on_delete=models.CASCADE, related_name="keywords")
    keyword = models.CharField(max_length=100)
    is_main = models.BooleanField(default=False)

    class Meta:
        ordering = ["-is_main", "keyword"]
        constraints = [models.UniqueConstraint(Lower("keyword"), name="labelkeyword_ci_unique")]

    def __str__(self) -> str:
        return self.keyword


class Asset(models.Model):
    """One image, stored once under the workspace at ``assets/<sha1[:2]>/<sha1>``."""

    sha1 = models.CharField(max_length=40, unique=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size_bytes = models.BigIntegerField()
    format = models.CharField(max_length=8)
    quality = models.FloatField(null=True, blank=True)
    has_thumbnail = models.BooleanField(default=False)
    decode_failed = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.sha1


class DatasetGroup(models.Model):
    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="dataset_groups")
    name = models.CharField(_("name"), max_length=100)
    description = models.TextField(_("description"), blank=True, max_length=2000)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint("project", Lower("name"), name="datasetgroup_project_name_ci_unique")]

    def __str__(self) -> str:
        return self.name


class DatasetVersion(models.Model):
    """Immutable once ready. Every version comes from a task and records its parents."""

    class State(models.TextChoices):
        PENDING = "pending", _("Pending")
        READY = "ready", _("Ready")
        ERROR = "error", _("Error")

    group = models.ForeignKey(DatasetGroup, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    task = models.ForeignKey("models_app.Task", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    parents = models.ManyToManyField("self", symmetrical=False, related_name="children", blank=True)
    parameters = models.JSONField(default=dict, blank=True)
    report = models.JSONField(default=dict, blank=True)
    is_public = models.BooleanField(default=False)
    asset_count = models.PositiveIntegerField(default=0)
    gt_box_count = models.PositiveIntegerField(default=0)
    pred_box_count = models.PositiveIntegerField(default=0)
    class_counts = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    ready_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint("group", "number", name="datasetversion_group_number_unique")]

    def __str__(self) -> str:
        return f"{self.group.name} v{self.number}"


class DatasetAsset(models.Model):
    """An asset's membership in a version, with its asset tags."""

    # no index of its own: (version, asset) and (version, id) lead with it
    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="items", db_index=False)
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=255, blank=True)
    tags = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint("version", "asset", name="datasetasset_version_asset_unique")]
        indexes = [models.Index(fields=["version", "id"], name="datasetasset_version_page")]  # keyset pages

    def __str__(self) -> str:
        return self.name or str(self.asset_id)


class PredictionSet(models.Model):
    class Source(models.TextChoices):
        IMPORTED = "imported", _("Imported")
        MODEL = "model", _("Model")

    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="prediction_sets")
    source = models.CharField(max_length=12, choices=Source.choices)
    name = models.CharField(max_length=200, blank=True)
    model_info = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name or self.source


class Box(models.Model):
    """A ground-truth box (no prediction set) or a prediction (with its set and score), in pixels."""

    # no index of its own: (version, asset) and (version, label) lead with it; fewer indexes, faster writes
    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="boxes", db_index=False)
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+")
    label = models.ForeignKey(LabelClass, on_delete=models.PROTECT, related_name="+")
    prediction_set = models.ForeignKey(PredictionSet, on_delete=models.CASCADE, null=True, blank=True)
    x1 = models.FloatField()
    y1 = models.FloatField()
    x2 = models.FloatField()
    y2 = models.FloatField()
    score = models.FloatField(null=True, blank=True)
    tags = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [models.Index(fields=["version", "asset"]), models.Index(fields=["version", "label"])]

    def __str__(self) -> str:
        return f"{self.label_id} ({self.x1:.0f},{self.y1:.0f},{self.x2:.0f},{self.y2:.0f})"


class LabellingTool(models.Model):
    """The labelling tool (Label Studio) the platform talks to: one row, set by admins."""

    url = models.URLField(_("Label Studio URL"), max_length=300, blank=True)
    token = models.CharField(_("API token"), max_length=2000, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    check_ok = models.BooleanField(null=True)
    check_message = models.TextField(blank=True)

    def __str__(self) -> str:
        return self.url or "Label Studio"


class Labelling(models.Model):
    """A dataset version sent to Label Studio: one Label Studio project, one task row (kind labelling)."""

    task = models.OneToOneField("models_app.Task", on_delete=models.CASCADE, related_name="labelling")
    source = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="labellings")
    output_name = models.CharField(max_length=100)
    output_group = models.ForeignKey(
        DatasetGroup, on_delete=models.SET_NULL, null=True, blank=True, related_name="labellings"
    )
    labels = models.ManyToManyField(LabelClass, related_name="+")
    labellers = models.JSONField(default=list, blank=True)
    keep_ground_truth = models.BooleanField(default=False)
    prediction_set = models.ForeignKey(PredictionSet, on_delete=models.SET_NULL, null=True, blank=True)
    guideline_name = models.CharField(max_length=200, blank=True)
    guideline_text = models.TextField(blank=True)
    public_base = models.CharField(max_length=300)
    tool_url = models.CharField(max_length=300, blank=True)
    ls_project_id = models.PositiveIntegerField(null=True, blank=True)
    ls_webhook_id = models.PositiveIntegerField(null=True, blank=True)
    total = models.PositiveIntegerField(default=0)
    labelled = models.PositiveIntegerField(default=0)
    unreachable_since = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_event_at = models.DateTimeField(null=True, blank=True)
    synced_at = models.DateTimeField(null=True, blank=True)
    collect_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Labelling #{self.pk}"


class LabellingItem(models.Model):
    """One image of a labelling and its Label Studio task; what was last imported from it."""

    labelling = models.ForeignKey(Labelling, on_delete=models.CASCADE, related_name="items")
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=255, blank=True)
    ls_task_id = models.PositiveIntegerField(null=True, blank=True)
    labelled = models.BooleanField(default=False)
    imported_key = models.CharField(max_length=100, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint("labelling", "asset", name="labellingitem_labelling_asset_unique"),
        ]
        indexes = [models.Index(fields=["labelling", "ls_task_id"])]

    def __str__(self) -> str:
        return self.name or str(self.asset_id)
