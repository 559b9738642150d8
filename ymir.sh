#!/usr/bin/env bash
# The two set-up commands of the README:
#   ./ymir.sh start   install what is missing, migrate, and run the platform (web server + Celery worker)
#   ./ymir.sh test    install the development tools and run the whole suite (lint, types, migrations, pytest)
set -euo pipefail
cd "$(dirname "$0")"

find_python() {
  for candidate in "${YMIR_PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "YMIR needs Python 3.11 or newer (set YMIR_PYTHON to its path)." >&2
  return 1
}

# Creates .venv once and installs the locked dependencies when the lock file changes.
bootstrap() {
  local lock="$1" venv="${YMIR_VENV:-.venv}"
  if [ ! -x "$venv/bin/python" ]; then
    "$(find_python)" -m venv "$venv"
  fi
  local stamp="$venv/.installed-$(sha256sum "$lock" | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check uv==0.13.8
    "$venv/bin/python" -m uv pip install --quiet --python "$venv/bin/python" -r "$lock"
    touch "$stamp"
  fi
  PY="$venv/bin/python"
}

# The default detector executor's own environment (torch on CPU), once per lock file; skipped with
# YMIR_DETECTOR=off. pip (not uv) so that local wheel folders and constraints configured for pip apply.
detector_env() {
  [ "${YMIR_DETECTOR:-on}" != "off" ] || return 0
  local lock=executors/requirements.lock venv="${YMIR_DETECTOR_VENV:-.venv-detector}"
  if [ ! -x "$venv/bin/python" ]; then
    "$(find_python)" -m venv "$venv"
  fi
  local stamp="$venv/.installed-$(sha256sum "$lock" | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "Installing the default detector's environment (torch, onnxruntime) in $venv ..." >&2
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet ${YMIR_DETECTOR_PIP_ARGS:-} -r "$lock"
    touch "$stamp"
  fi
  YMIR_DETECTOR_PYTHON="$(cd "$venv" && pwd)/bin/python"
  export YMIR_DETECTOR_PYTHON
}

cmd="${1:-}"; shift || true
case "$cmd" in
  start)
    bootstrap requirements.lock
    detector_env
    exec "$PY" manage.py serve "$@"
    ;;
  test)
    bootstrap requirements-dev.lock
    [ -n "${YMIR_TEST_ONLY_STATIC:-}" ] || detector_env
    exec "$PY" -m ymir.testsuite "$@"
    ;;
  *)
    echo "usage: ./ymir.sh start [--host H] [--port P] | ./ymir.sh test [pytest args]" >&2
    exit 2
    ;;
esac
