from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class IterationsConfig(AppConfig):
    name = "iterations"
    verbose_name = _("Iterations")
