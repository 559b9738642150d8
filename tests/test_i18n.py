"""The Simplified Chinese catalog is complete and its compiled form is current."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT

PO = ROOT / "locale/zh_Hans/LC_MESSAGES/django.po"
MO = ROOT / "locale/zh_Hans/LC_MESSAGES/django.mo"


@pytest.fixture
def msgfmt() -> str:
    path = shutil.which("msgfmt")
    if not path:
        pytest.skip("gettext's msgfmt is not installed")
    return path


def test_every_message_is_translated(msgfmt, tmp_path):
    result = subprocess.run(
        [msgfmt, "--check", "--statistics", "-o", str(tmp_path / "out.mo"), str(PO)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "untranslated" not in result.stderr and "fuzzy" not in result.stderr, result.stderr


def test_compiled_catalog_is_current(msgfmt, tmp_path):
    subprocess.run([msgfmt, "-o", str(tmp_path / "fresh.mo"), str(PO)], check=True)
    assert (tmp_path / "fresh.mo").read_bytes() == MO.read_bytes(), "run: msgfmt -o django.mo django.po"
