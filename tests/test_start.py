"""The start command's code path on a clean database: serve, log in over HTTP, see Home, stop cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
import requests

from tests.conftest import ROOT, free_port
from tests.factories import PASSWORD

pytestmark = pytest.mark.worker


def _read_until(process: subprocess.Popen[str], pattern: str, limit: int = 2000) -> str:
    seen = []
    for _ in range(limit):
        line = process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return line
    tail = "".join(seen[-60:])
    raise AssertionError(f"start output never matched {pattern!r}:\n{tail}")


def test_start_serves_login_register_home_and_stops_cleanly(fresh_database_url, data_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "YMIR_WORKSPACE")}
    env.update(
        {
            "YMIR_DATA_DIR": str(data_dir),
            "YMIR_DEFAULT_QUEUE": f"start-{uuid.uuid4().hex[:8]}",
            "YMIR_DEMO_SIZES": "260,2,4",
        }
    )
    env.pop("YMIR_DEMO", None)  # the start command turns the demo on
    if fresh_database_url:
        env["DATABASE_URL"] = fresh_database_url
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "serve",
            "--port",
            str(port),
            "--web-workers",
            "1",
            "--concurrency",
            "1",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = _read_until(process, r"YMIR is running at ")
        base = line.split("running at ", 1)[1].strip()
        assert base == f"http://127.0.0.1:{port}/"
        assert "first account becomes the super admin" in _read_until(process, r"No account yet|Log in with")
        session = requests.Session()
        page = session.get(base + "accounts/register/", timeout=30)
        assert page.status_code == 200
        csrf = session.cookies["csrftoken"]
        response = session.post(
            base + "accounts/register/",
            data={
                "username": "first_admin",
                "email": "",
                "password1": PASSWORD,
                "password2": PASSWORD,
                "csrfmiddlewaretoken": csrf,
            },
            headers={"Referer": base + "accounts/register/"},
            timeout=30,
        )
        assert response.status_code == 200 and response.url == base
        session.post(
            base + "accounts/logout/",
            data={"csrfmiddlewaretoken": session.cookies["csrftoken"]},
            headers={"Referer": base},
            timeout=30,
        )
        login = session.get(base + "accounts/login/", timeout=30)
        assert login.status_code == 200 and 'name="password"' in login.text
        home = session.post(
            base + "accounts/login/",
            data={
                "username": "first_admin",
                "password": PASSWORD,
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            headers={"Referer": base + "accounts/login/"},
            timeout=30,
        )
        assert home.status_code == 200 and home.url == base
        assert "Welcome, first_admin" in home.text and "Super admin" in home.text
        assert (data_dir / "workspace" / "assets").is_dir()
        # the first account got the demo project; the start command's worker imports its three datasets
        assert "Lego demo" in home.text
        found = re.search(r'href="/projects/(\d+)/"', home.text)
        assert found is not None
        project_url = f"{base}projects/{found.group(1)}/"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = session.get(project_url, timeout=30).text
            if text.count("state-ready") == 3:
                break
            time.sleep(0.5)
        assert text.count("state-ready") == 3, text[-3000:]
        for name, count in (("lego-train", 260), ("lego-test", 2), ("lego-mining", 4)):
            row = text.split(name, 1)[1].split("</tr>", 1)[0]
            assert f"<td>{count}</td>" in row, row
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-3000:]
    assert "YMIR stopped." in output
    with pytest.raises(requests.ConnectionError):
        requests.get(base, timeout=5)
