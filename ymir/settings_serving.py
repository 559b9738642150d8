"""Settings of the inference service process (the ``deployment`` compose service, docs/deployment.md).

The platform's settings, with only the API mounted and only the middleware an API needs: no sessions, CSRF,
messages, static files, clickjacking headers or htmx, which serve pages this process does not serve; and the
plain prediction answered in front of Django (deployment/fastpath.py). Each request then costs less outside
onnxruntime (benchmarks/serving_speed.py shows both arrangements).
"""

from ymir.settings import *  # noqa: F403

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "core.middleware.RequestSizeLimitMiddleware",
    "core.middleware.ApiErrorShapeMiddleware",
    "core.middleware.ApiLanguageMiddleware",  # error messages in the caller's language
]
ROOT_URLCONF = "ymir.urls_serving"
YMIR_PREDICT_FAST_PATH = env_bool("YMIR_PREDICT_FAST_PATH", True)  # noqa: F405 (deployment/fastpath.py)
