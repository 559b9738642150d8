"""Published algorithms (a model stage as a served ONNX graph with its card), devices and their assignments,
and the field images the service keeps for the next iteration."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class Algorithm(models.Model):
    class Visibility(models.TextChoices):
        PRIVATE = "private", _("Private")
        PENDING = "pending", _("Waiting for review")
        PUBLIC = "public", _("Public")
        REJECTED = "rejected", _("Rejected")

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="algorithms")
    project = models.ForeignKey("projects.Project", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    stage = models.ForeignKey(
        "models_app.ModelStage", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    name = models.CharField(_("name"), max_length=100)
    description = models.TextField(_("description"), blank=True, max_length=2000)
    file = models.CharField(max_length=300)  # relative to the workspace: algorithms/<id>/model[.int8].onnx
    float_file = models.CharField(max_length=300, blank=True)
    quantized = models.BooleanField(default=False)
    class_names = models.JSONField(default=list)
    image_size = models.PositiveIntegerField(default=0)
    score_threshold = models.FloatField(default=0.25)
    max_boxes = models.PositiveIntegerField(default=100)
    card = models.JSONField(default=dict, blank=True)
    quantization = models.JSONField(default=dict, blank=True)
    visibility = models.CharField(max_length=10, choices=Visibility.choices, default=Visibility.PRIVATE)
    review_reason = models.TextField(blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # feed the loop: keep some low-confidence field images (opt-in)
    keep_field_images = models.BooleanField(default=False)
    field_threshold = models.FloatField(default=0.5)
    field_rate = models.FloatField(default=0.1)
    field_cap = models.PositiveIntegerField(default=1000)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name


class FieldImage(models.Model):
    """An image the service saw with low confidence, kept until collected into a dataset version."""

    algorithm = models.ForeignKey(Algorithm, on_delete=models.CASCADE, related_name="field_images")
    asset = models.ForeignKey("datasets.Asset", on_delete=models.PROTECT, related_name="+")
    top_score = models.FloatField(null=True, blank=True)
    collected = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint("algorithm", "asset", name="fieldimage_algorithm_asset_unique")]

    def __str__(self) -> str:
        return f"{self.algorithm_id}/{self.asset_id}"


class Device(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="devices")
    name = models.CharField(_("name"), max_length=100)
    kind = models.CharField(_("kind"), max_length=100, blank=True)
    location = models.CharField(_("location"), max_length=200, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    token_prefix = models.CharField(max_length=16)
    registered_at = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    status = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class Assignment(models.Model):
    """An algorithm deployed to a device; switched on or off in the device's algorithm center."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="assignments")
    algorithm = models.ForeignKey(Algorithm, on_delete=models.CASCADE, related_name="assignments")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint("device", "algorithm", name="assignment_device_algorithm_unique")]

    def __str__(self) -> str:
        return f"{self.device_id}/{self.algorithm_id}"
