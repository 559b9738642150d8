#!/usr/bin/env bash
# The two set-up commands of the README:
#   ./ymir.sh start   install what is missing, migrate, and run the platform (web server + Celery worker)
#   ./ymir.sh test    install the development tools and run the whole suite (lint, types, migrations, pytest)
# (./ymir.sh start --label-studio also starts a local Label Studio for labelling; docs/labelling.md)
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

# A local Label Studio (its own virtual environment, data under $YMIR_DATA_DIR/label-studio) on loopback,
# started in the background unless one already answers there. Its organisation gets a known legacy token
# (switched on for it at first start), kept in the data folder; prints the two variables the platform reads.
LABEL_STUDIO_VERSION=1.23.2
label_studio() {
  local venv="${YMIR_LABEL_STUDIO_VENV:-.venv-label-studio}" port="${YMIR_LABEL_STUDIO_PORT:-8080}"
  local data; data="$(mkdir -p "${YMIR_DATA_DIR:-data}/label-studio" && cd "${YMIR_DATA_DIR:-data}/label-studio" && pwd)"
  local url="http://127.0.0.1:$port"
  if [ ! -x "$venv/bin/label-studio" ]; then
    echo "Installing Label Studio $LABEL_STUDIO_VERSION in $venv (about 1 GB) ..." >&2
    "$(find_python)" -m venv "$venv"
  fi
  # its dependencies held to a set known to work (Label Studio leaves most open); a no-op once they match
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c requirements-label-studio.lock \
    "label-studio==$LABEL_STUDIO_VERSION" >&2
  if [ ! -f "$data/token" ]; then
    (umask 077; "$venv/bin/python" -c 'import secrets; print(secrets.token_hex(20))' > "$data/token"
     "$venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(18))' > "$data/password")
  fi
  if ! curl -sf "$url/health" >/dev/null 2>&1; then
    echo "Starting Label Studio on $url (log: $data/label-studio.log) ..." >&2
    LABEL_STUDIO_BASE_DATA_DIR="$data" LABEL_STUDIO_USERNAME="${YMIR_LABEL_STUDIO_USER:-admin@ymir.local}" \
    LABEL_STUDIO_PASSWORD="$(cat "$data/password")" LABEL_STUDIO_USER_TOKEN="$(cat "$data/token")" \
    LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true SSRF_PROTECTION_ENABLED=false LATEST_VERSION_CHECK=false \
    LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true WEBHOOK_TIMEOUT=3 \
      nohup "$venv/bin/label-studio" start --no-browser --port "$port" --internal-host 127.0.0.1 \
      >"$data/label-studio.log" 2>&1 </dev/null &
    for _ in $(seq 300); do curl -sf "$url/health" >/dev/null 2>&1 && break; sleep 1; done
    curl -sf "$url/health" >/dev/null 2>&1 || { echo "Label Studio did not start; see $data/label-studio.log" >&2; return 1; }
  fi
  echo "YMIR_LABEL_STUDIO_URL=$url"
  echo "YMIR_LABEL_STUDIO_TOKEN=$(cat "$data/token")"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  start)
    bootstrap requirements.lock
    detector_env
    if [ "${1:-}" = "--label-studio" ]; then  # also a local Label Studio for labelling
      shift
      while IFS= read -r line; do export "${line?}"; done < <(label_studio)
      echo "Label Studio: $YMIR_LABEL_STUDIO_URL (user ${YMIR_LABEL_STUDIO_USER:-admin@ymir.local}, password in ${YMIR_DATA_DIR:-data}/label-studio/password)" >&2
    fi
    exec "$PY" manage.py serve "$@"
    ;;
  test)
    bootstrap requirements-dev.lock
    [ -n "${YMIR_TEST_ONLY_STATIC:-}" ] || detector_env
    exec "$PY" -m ymir.testsuite "$@"
    ;;
  label-studio)  # only the local Label Studio (what CI uses for the labelling tests)
    label_studio
    ;;
  *)
    echo "usage: ./ymir.sh start [--label-studio] [--host H] [--port P] | ./ymir.sh test [pytest args]" >&2
    exit 2
    ;;
esac
