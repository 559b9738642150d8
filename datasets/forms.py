from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from datasets.models import DatasetVersion


class ImportForm(forms.Form):
    SOURCES = [
        ("upload", _("Zip upload")),
        ("url", _("URL of a zip")),
        ("path", _("Server path")),
        ("copy", _("Copy of a dataset")),
    ]
    name = forms.CharField(label=_("Name"), max_length=100)
    description = forms.CharField(label=_("Description"), required=False, max_length=2000)
    source = forms.ChoiceField(label=_("Source"), choices=SOURCES, initial="upload", widget=forms.RadioSelect)
    file = forms.FileField(
        label=_("Zip file"),
        required=False,
        help_text=_("images/ (or JPEGImages/), optional gt/ and pred/ annotations."),
    )
    url = forms.URLField(label=_("URL of the zip"), required=False, max_length=2000, assume_scheme="https")
    path = forms.CharField(label=_("Folder under the sharing root"), required=False, max_length=1000)
    copy_of = forms.ModelChoiceField(label=_("Dataset to copy"), queryset=DatasetVersion.objects.none(), required=False)
    format = forms.ChoiceField(
        label=_("Annotation format"), choices=[("voc", "Pascal VOC"), ("coco", "COCO json"), ("yolo", "YOLO txt")]
    )
    unknown_classes = forms.ChoiceField(
        label=_("Unknown classes"),
        choices=[
            ("stop", _("Stop the import")),
            ("ignore", _("Ignore their boxes")),
            ("add", _("Add them as classes")),
        ],
    )

    def __init__(self, *args: Any, versions: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if versions is not None:
            self.fields["copy_of"].queryset = versions  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        source = cleaned.get("source")
        if source == "upload" and not cleaned.get("file"):
            self.add_error("file", _("Choose a zip file."))
        if source == "url" and not cleaned.get("url"):
            self.add_error("url", _("Give a URL."))
        if source == "path" and not cleaned.get("path"):
            self.add_error("path", _("Give a folder."))
        if source == "copy" and not cleaned.get("copy_of"):
            self.add_error("copy_of", _("Choose a dataset."))
        return cleaned


class ClassBatchForm(forms.Form):
    text = forms.CharField(
        label=_("Classes, one per line (name, alias, alias)"), widget=forms.Textarea(attrs={"rows": 4})
    )


class ClassRenameForm(forms.Form):
    name = forms.CharField(label=_("New name"), max_length=100)


class AliasForm(forms.Form):
    alias = forms.CharField(label=_("Alias"), max_length=100)


class MergeForm(forms.Form):
    target = forms.IntegerField(label=_("Merge into"))
