from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class DeploymentConfig(AppConfig):
    name = "deployment"
    verbose_name = _("Deployment")

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from deployment.models import Algorithm
        from deployment.services import serving_forget

        def forget(sender: object, instance: Algorithm, **kwargs: object) -> None:
            serving_forget(instance.pk)

        post_save.connect(forget, sender=Algorithm, dispatch_uid="deployment.serving_forget")
        post_delete.connect(forget, sender=Algorithm, dispatch_uid="deployment.serving_forget_deleted")
