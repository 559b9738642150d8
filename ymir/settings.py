"""Settings, driven by the environment.

With nothing configured the platform runs on an embedded default: SQLite, a filesystem message broker
(kombu's filesystem transport), a file cache and the local runner, all under ``YMIR_DATA_DIR``.
Set ``DATABASE_URL`` (PostgreSQL), ``REDIS_URL`` and ``DOCKER_HOST`` to use real services, and
``YMIR_PRODUCTION=1`` behind HTTPS.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from ymir.env import env_bool, env_int, env_list, env_path, env_str, load_or_create_secret

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = env_path("YMIR_DATA_DIR", BASE_DIR / "data")
PRODUCTION = env_bool("YMIR_PRODUCTION")

SECRET_KEY = env_str("YMIR_SECRET_KEY") or env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("YMIR_SECRET_KEY must be set when YMIR_PRODUCTION=1.")
    SECRET_KEY = load_or_create_secret(DATA_DIR / "secret_key")

DEBUG = env_bool("YMIR_DEBUG")
ALLOWED_HOSTS = env_list("YMIR_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("YMIR_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "ninja",
    "core",
    "projects",
    "datasets",
    "models_app",
    "iterations",
    "deployment",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "core.middleware.RequestSizeLimitMiddleware",
    "core.middleware.ApiErrorShapeMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "ymir.urls"
WSGI_APPLICATION = "ymir.wsgi.application"
ASGI_APPLICATION = "ymir.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "core.context_processors.navigation",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=env_int("YMIR_DB_CONN_MAX_AGE", 60), conn_health_checks=True
        )
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("YMIR_SQLITE_PATH") or str(DATA_DIR / "ymir.sqlite3"),
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            "TEST": {"NAME": str(DATA_DIR / "test.sqlite3")},
        }
    }
EMBEDDED_DATABASE = not DATABASE_URL
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Broker, results and cache --------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {"visibility_timeout": 3600}
else:
    _broker_dir = DATA_DIR / "broker"
    CELERY_BROKER_URL = "ymirfs://"  # kombu's filesystem transport, messages written whole (ymir/broker.py)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
    CELERY_RESULT_BACKEND = f"file://{DATA_DIR / 'results'}"
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
        }
    }
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = env_str("YMIR_DEFAULT_QUEUE", "ymir")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"

# --- Container engine and workspace ---------------------------------------------------------------
DOCKER_HOST = env_str("DOCKER_HOST")
YMIR_WORKSPACE = env_path("YMIR_WORKSPACE", DATA_DIR / "workspace")
YMIR_WORKSPACE_MIN_FREE_BYTES = env_int("YMIR_WORKSPACE_MIN_FREE_BYTES", 1 << 30)

# --- Auth -----------------------------------------------------------------------------------------
AUTH_USER_MODEL = "core.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "core.validators.CharacterClassValidator", "OPTIONS": {"min_classes": 2}},
]
YMIR_REGISTRATION_OPEN = env_bool("YMIR_REGISTRATION_OPEN", True)
YMIR_LOGIN_FAILURE_LIMIT = env_int("YMIR_LOGIN_FAILURE_LIMIT", 5)
YMIR_LOGIN_FAILURE_WINDOW = env_int("YMIR_LOGIN_FAILURE_WINDOW", 15 * 60)
YMIR_LOGIN_TOKEN_DAYS = env_int("YMIR_LOGIN_TOKEN_DAYS", 30)

# --- Security -------------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("YMIR_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("YMIR_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("YMIR_HSTS_PRELOAD", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
# Request bodies: ordinary requests are small; dataset and model uploads stream to disk.
YMIR_MAX_REQUEST_BYTES = env_int("YMIR_MAX_REQUEST_BYTES", 10 * 1024 * 1024)
YMIR_MAX_UPLOAD_BYTES = env_int("YMIR_MAX_UPLOAD_BYTES", 20 * 1024**3)
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FIELDS = 2000
FILE_UPLOAD_TEMP_DIR = None

# --- I18n and static files ------------------------------------------------------------------------
LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("zh-hans", _("Simplified Chinese"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env_str("YMIR_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
if DEBUG:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("YMIR_LOG_LEVEL", "INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}

NINJA_PAGINATION_PER_PAGE = 50

# --- Datasets -------------------------------------------------------------------------------------
YMIR_SHARING_ROOT = env_str("YMIR_SHARING_ROOT")
YMIR_IMPORT_MAX_ENTRIES = env_int("YMIR_IMPORT_MAX_ENTRIES", 2_000_000)
YMIR_IMPORT_MAX_TOTAL_BYTES = env_int("YMIR_IMPORT_MAX_TOTAL_BYTES", 200 * 1024**3)
YMIR_IMPORT_MAX_ENTRY_BYTES = env_int("YMIR_IMPORT_MAX_ENTRY_BYTES", 512 * 1024**2)
YMIR_IMPORT_MAX_RATIO = float(env_str("YMIR_IMPORT_MAX_RATIO", "200"))
YMIR_MAX_IMAGE_PIXELS = env_int("YMIR_MAX_IMAGE_PIXELS", 178_956_970)
# The start command turns the demo on: the first account gets a project with the synthetic Lego-like set.
YMIR_DEMO = env_bool("YMIR_DEMO", False)
YMIR_DEMO_SIZES = [int(n) for n in env_list("YMIR_DEMO_SIZES", "100,10,1181")]
YMIR_IMPORT_WORKERS = env_int("YMIR_IMPORT_WORKERS", 0)  # threads for the image pass; 0: one per core
YMIR_URL_ALLOWLIST = env_list("YMIR_URL_ALLOWLIST")  # hosts or networks user URLs may reach though not public
YMIR_IMPORT_MAX_DOWNLOAD_BYTES = env_int("YMIR_IMPORT_MAX_DOWNLOAD_BYTES", 50 * 1024**3)

# --- Tasks ----------------------------------------------------------------------------------------
# A running task beats at least every few seconds; one silent for this long lost its worker.
YMIR_TASK_STALE_SECONDS = env_int("YMIR_TASK_STALE_SECONDS", 300)

# Executors and the job queue (docs/jobs.md).
YMIR_HOST_NAME = env_str("YMIR_HOST_NAME")  # this worker host's name; the machine's host name when empty
YMIR_WORKER_GPUS = [g.strip() for g in env_str("YMIR_WORKER_GPUS").split(",") if g.strip()]  # e.g. "0,1"
YMIR_INSTANCE = env_str("YMIR_INSTANCE")  # tells this installation's containers apart on a shared engine
YMIR_EXECUTOR_UID = env_int("YMIR_EXECUTOR_UID", 0)  # the uid executors run as; 1000 when the platform is root
YMIR_EXECUTOR_LOG_LIMIT = env_int("YMIR_EXECUTOR_LOG_LIMIT", 64 << 20)  # bytes of executor log kept
YMIR_FOLLOW_SECONDS = float(env_str("YMIR_FOLLOW_SECONDS", "3"))  # how often a run is polled
YMIR_GPU_WAIT_SECONDS = float(env_str("YMIR_GPU_WAIT_SECONDS", "5"))  # how often a waiting GPU task looks again
YMIR_GPU_LEASE_SECONDS = env_int("YMIR_GPU_LEASE_SECONDS", 120)  # a lease not renewed for this long is free
YMIR_MAX_DELIVERIES = env_int("YMIR_MAX_DELIVERIES", 3)  # launches that may kill their worker before error
YMIR_MAX_GPUS_PER_TASK = env_int("YMIR_MAX_GPUS_PER_TASK", 8)
YMIR_TASK_TIMEOUTS = {
    "training": env_int("YMIR_TIMEOUT_TRAINING", 7 * 86400),
    "mining": env_int("YMIR_TIMEOUT_MINING", 2 * 86400),
    "infer": env_int("YMIR_TIMEOUT_INFER", 2 * 86400),
}
# The default detector executor (executors/): its package folder and the Python of its own environment.
YMIR_DETECTOR_FOLDER = BASE_DIR / "executors"
_DETECTOR_VENV_PYTHON = BASE_DIR / ".venv-detector" / "bin" / "python"
YMIR_DETECTOR_PYTHON = env_str("YMIR_DETECTOR_PYTHON") or (
    str(_DETECTOR_VENV_PYTHON) if _DETECTOR_VENV_PYTHON.exists() else ""
)
YMIR_MODEL_PACKAGE_MAX_BYTES = env_int("YMIR_MODEL_PACKAGE_MAX_BYTES", 4 << 30)  # an imported model package
YMIR_TRY_MAX_BYTES = env_int("YMIR_TRY_MAX_BYTES", 8 << 20)  # an image tried on a model's page (upload or URL)

# --- Labelling (docs/labelling.md) ----------------------------------------------------------------------
# The Label Studio server and its API token; an admin's settings in the console take precedence.
YMIR_LABEL_STUDIO_URL = env_str("YMIR_LABEL_STUDIO_URL")
YMIR_LABEL_STUDIO_TOKEN = env_str("YMIR_LABEL_STUDIO_TOKEN")
YMIR_LABEL_STUDIO_TIMEOUT = float(env_str("YMIR_LABEL_STUDIO_TIMEOUT", "10"))  # seconds per call
# Where Label Studio and labellers' browsers reach this platform (image URLs, webhooks); when empty, the
# address the labelling task was created from.
YMIR_PUBLIC_URL = env_str("YMIR_PUBLIC_URL")
YMIR_LABELLING_POLL_SECONDS = float(env_str("YMIR_LABELLING_POLL_SECONDS", "60"))  # the fallback poll
YMIR_LABELLING_URL_GRACE_HOURS = env_int("YMIR_LABELLING_URL_GRACE_HOURS", 24)  # image URLs after the task ends

# Deployment (docs/deployment.md): the inference service's limits.
YMIR_PREDICT_MAX_BYTES = env_int("YMIR_PREDICT_MAX_BYTES", 20 << 20)  # a predict request's body
YMIR_PREDICT_MAX_IMAGES = env_int("YMIR_PREDICT_MAX_IMAGES", 16)  # images per request (one batch)
YMIR_PREDICT_RATE = env_int("YMIR_PREDICT_RATE", 600)  # requests per token per window (0: no limit)
YMIR_PREDICT_RATE_WINDOW = env_int("YMIR_PREDICT_RATE_WINDOW", 60)  # seconds
YMIR_PREDICT_FAST_PATH = False  # plain predictions answered in front of Django (on in ymir/settings_serving.py)
YMIR_DEVICE_HEARTBEAT_SECONDS = env_int("YMIR_DEVICE_HEARTBEAT_SECONDS", 10)  # a device agent's beat

# Iterations (docs/iterations.md): how often the beat moves active loops on; the oracle labeller (labels from
# hidden ground truth) is a test and benchmark tool, never on in production.
YMIR_ITERATION_ADVANCE_SECONDS = float(env_str("YMIR_ITERATION_ADVANCE_SECONDS", "10"))
YMIR_ORACLE_LABELLER = env_bool("YMIR_ORACLE_LABELLER", False)

CELERY_BEAT_SCHEDULE = {
    "reconcile-tasks": {"task": "tasks.reconcile", "schedule": 60.0},
    "labelling-poll": {"task": "labelling.poll", "schedule": YMIR_LABELLING_POLL_SECONDS},
    "iterations-advance": {"task": "iterations.advance", "schedule": YMIR_ITERATION_ADVANCE_SECONDS},
}
