"""Import from a URL under the address rules: only public addresses unless an admin allows them."""

from __future__ import annotations

import http.server
import threading
from functools import partial

import pytest

from core.models import UrlAllowRule
from core.netguard import UrlRefused, check_url
from datasets.models import DatasetVersion
from tests.conftest import api_as
from tests.datasets_util import import_now, jpeg, make_zip
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def server(tmp_path):
    """A local HTTP server (loopback only) serving tmp_path, with /redirect-* answers."""
    make_zip(tmp_path / "data.zip", {"images/a.jpg": jpeg(), "images/b.jpg": jpeg(colour=(0, 0, 200))})

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/redirect-private"):
                self.send_response(302)
                self.send_header("Location", "http://10.0.0.1/data.zip")
                self.end_headers()
                return
            if self.path.startswith("/redirect-ok"):
                self.send_response(302)
                self.send_header("Location", "/data.zip")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(tmp_path)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/data.zip",
        "http://localhost/data.zip",
        "http://[::1]/data.zip",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/data.zip",
        "http://192.168.1.10/data.zip",
        "http://172.16.0.1/data.zip",
        "http://0.0.0.0/data.zip",
        "ftp://example.org/data.zip",
        "file:///etc/passwd",
        "http://user:pw@example.org/data.zip",
    ],
)
def test_non_public_and_non_http_urls_are_refused(url):
    with pytest.raises(UrlRefused):
        check_url(url)


def test_refused_urls_create_nothing_through_the_api(trainer, workspace):
    project = ProjectFactory(owner=trainer)
    response = api_as(trainer).post(
        f"/api/v1/projects/{project.pk}/datasets", {"name": "x", "source": {"url": "http://127.0.0.1:9/a.zip"}}
    )
    assert response.status_code == 422 and response.json()["error"]["code"] == "url_refused"
    assert not DatasetVersion.objects.exists()


def test_allow_listed_url_is_imported_and_redirects_are_checked(trainer, workspace, server, settings, tmp_path):
    project = ProjectFactory(owner=trainer)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    UrlAllowRule.objects.create(pattern="127.0.0.0/8", note="test server")
    version = import_now(trainer, project, name="via url", url=f"{server}/data.zip")
    assert version.state == "ready" and version.asset_count == 2, version.report
    redirected = import_now(trainer, project, name="redirected", url=f"{server}/redirect-ok")
    assert redirected.state == "ready"
    private = import_now(trainer, project, name="private hop", url=f"{server}/redirect-private")
    assert private.state == "error" and "10.0.0.1" in private.report["error"]["message"]
    missing = import_now(trainer, project, name="missing", url=f"{server}/nothing.zip")
    assert missing.state == "error" and "404" in missing.report["error"]["message"]
    junk = import_now(trainer, project, name="junk", url=f"{server}/junk.zip")
    assert junk.state == "error" and "not a readable zip" in junk.report["error"]["message"]
    settings.YMIR_IMPORT_MAX_DOWNLOAD_BYTES = 100
    big = import_now(trainer, project, name="too big", url=f"{server}/data.zip")
    assert big.state == "error" and "larger than the limit" in big.report["error"]["message"]
    assert not list((workspace / "uploads").iterdir())  # failed downloads leave nothing behind
