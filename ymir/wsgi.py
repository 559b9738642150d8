import os
from typing import Any

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ymir.settings")
application: Any = get_wsgi_application()
if settings.YMIR_PREDICT_FAST_PATH:  # the inference service (ymir/settings_serving.py, deployment/fastpath.py)
    from deployment.fastpath import FastPredict

    application = FastPredict(application)
