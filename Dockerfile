# The platform image (web, worker, beat). Executor images are separate (see docs/executors.md).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 YMIR_DATA_DIR=/data YMIR_WORKSPACE=/workspace
RUN apt-get update && apt-get install -y --no-install-recommends gettext && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY . .
RUN YMIR_SECRET_KEY=build-only python manage.py collectstatic --noinput -v0 \
    && useradd --uid 1000 --create-home ymir && mkdir -p /data /workspace && chown ymir /data /workspace
USER ymir
EXPOSE 8000
CMD ["gunicorn", "ymir.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "4"]
