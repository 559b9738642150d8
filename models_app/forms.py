"""Forms for training, mining, inference and evaluation. Hyper-parameter fields are made from the chosen
image's template, one typed field per key, so a wrong type is a form error and nothing starts."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy

from datasets.models import DatasetVersion, PredictionSet
from models_app.models import ExecutorImage, ModelStage
from models_app.training import editable_template

CONFIG_PREFIX = "cfg_"


def add_config_fields(form: forms.Form, image: ExecutorImage | None, task_type: str) -> None:
    """One field per template key, typed by its default value."""
    if image is None:
        return
    for key, default in sorted(editable_template(image, task_type).items()):  # jsonb keeps no key order
        name = CONFIG_PREFIX + key
        label = key
        if isinstance(default, bool):
            form.fields[name] = forms.BooleanField(label=label, required=False, initial=default)
        elif isinstance(default, int):
            form.fields[name] = forms.IntegerField(label=label, initial=default)
        elif isinstance(default, float):
            form.fields[name] = forms.FloatField(label=label, initial=default)
        elif isinstance(default, str):
            form.fields[name] = forms.CharField(label=label, initial=default, required=False, max_length=500)
        else:
            form.fields[name] = forms.JSONField(label=label, initial=default, required=False)
        if key == "image_size":
            form.fields[name].help_text = gettext_lazy(
                "Longest side: each image is scaled so that its longest side is this."
            )


def config_values(form: forms.Form) -> dict[str, Any]:
    return {k[len(CONFIG_PREFIX) :]: v for k, v in form.cleaned_data.items() if k.startswith(CONFIG_PREFIX)}


def config_names(form: forms.Form) -> list[str]:
    return [name for name in form.fields if name.startswith(CONFIG_PREFIX)]


class VersionChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: DatasetVersion) -> str:
        return f"{obj.group.name} v{obj.number} ({obj.asset_count} · {obj.gt_box_count})"


class VersionMultiChoice(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: DatasetVersion) -> str:
        return f"{obj.group.name} v{obj.number} ({obj.asset_count})"


class StageChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: ModelStage) -> str:
        metric = (obj.metrics or {}).get("AP50")
        shown = f" · mAP50 {metric:.3f}" if isinstance(metric, float) else ""
        return f"{obj.version} / {obj.name}{shown}"


class StageMultiChoice(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: ModelStage) -> str:
        return f"{obj.version} / {obj.name}"


class TrainingForm(forms.Form):
    model_name = forms.CharField(label=gettext_lazy("Model name"), max_length=100, required=False)
    image = forms.ModelChoiceField(queryset=ExecutorImage.objects.none(), label=gettext_lazy("Training image"))
    train = VersionChoice(queryset=DatasetVersion.objects.none(), label=gettext_lazy("Training dataset"))
    val = VersionChoice(queryset=DatasetVersion.objects.none(), label=gettext_lazy("Validation dataset"))
    class_names = forms.MultipleChoiceField(label=gettext_lazy("Training targets"), choices=())
    overlap = forms.ChoiceField(
        label=gettext_lazy("Images in both sets"),
        choices=[
            ("stop", gettext_lazy("Stop and tell me")),
            ("drop_val", gettext_lazy("Drop them from the validation set")),
            ("drop_train", gettext_lazy("Drop them from the training set")),
        ],
        initial="stop",
    )
    pretrained = StageChoice(
        queryset=ModelStage.objects.none(), required=False, label=gettext_lazy("Pretrained model (same image only)")
    )
    gpu_count = forms.IntegerField(label=gettext_lazy("GPUs"), min_value=0, max_value=64, initial=0)


class MiningForm(forms.Form):
    output_name = forms.CharField(label=gettext_lazy("Name of the mined dataset"), max_length=100, required=False)
    candidates = VersionChoice(queryset=DatasetVersion.objects.none(), label=gettext_lazy("Dataset to mine"))
    stage = StageChoice(queryset=ModelStage.objects.none(), label=gettext_lazy("Model and stage"))
    image = forms.ModelChoiceField(queryset=ExecutorImage.objects.none(), label=gettext_lazy("Mining image"))
    top_k = forms.IntegerField(label=gettext_lazy("Top-k images"), min_value=1, initial=100)
    also_infer = forms.BooleanField(label=gettext_lazy("Also produce pre-annotations"), required=False)
    exclude_labelled = forms.BooleanField(
        label=gettext_lazy("Skip images already labelled in this project"), required=False, initial=True
    )
    exclude_mined = forms.BooleanField(
        label=gettext_lazy("Skip images already mined in this project"), required=False, initial=True
    )
    class_balance = forms.BooleanField(
        label=gettext_lazy("Favour images of classes rare in the training set (needs pre-annotations)"), required=False
    )
    diversity = forms.BooleanField(label=gettext_lazy("Skip near-duplicate images"), required=False, initial=True)
    gpu_count = forms.IntegerField(label=gettext_lazy("GPUs"), min_value=0, max_value=64, initial=0)


class InferenceForm(forms.Form):
    stages = StageMultiChoice(queryset=ModelStage.objects.none(), label=gettext_lazy("Models and stages"))
    versions = VersionMultiChoice(queryset=DatasetVersion.objects.none(), label=gettext_lazy("Datasets"))
    gpu_count = forms.IntegerField(label=gettext_lazy("GPUs"), min_value=0, max_value=64, initial=0)


class PredictionSetChoice(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: PredictionSet) -> str:
        return str(obj)


class EvaluationForm(forms.Form):
    version = VersionChoice(queryset=DatasetVersion.objects.none(), label=gettext_lazy("Test dataset"))
    prediction_sets = PredictionSetChoice(
        queryset=PredictionSet.objects.none(),
        label=gettext_lazy("Predictions (models) to compare"),
        widget=forms.CheckboxSelectMultiple,
    )
    ious = forms.ChoiceField(
        label=gettext_lazy("IoU thresholds"),
        choices=[("0.5:0.95", "0.5:0.95 (COCO)"), ("0.5", "0.5"), ("0.75", "0.75")],
        initial="0.5:0.95",
    )
    score_threshold = forms.FloatField(label=gettext_lazy("Score threshold"), min_value=0, max_value=1, initial=0.0)
    max_dets = forms.CharField(label=gettext_lazy("maxDets"), initial="1, 10, 100", max_length=40)

    def clean_max_dets(self) -> list[int]:
        try:
            return [int(v) for v in self.cleaned_data["max_dets"].replace(";", ",").split(",")]
        except ValueError:
            raise forms.ValidationError(gettext_lazy("Three whole numbers, e.g. 1, 10, 100.")) from None
