"""The embedded default's broker transport (ymir/broker.py): a message appears in the queue folder only whole."""

from __future__ import annotations

import os

import pytest
from kombu import Connection
from kombu.exceptions import ChannelError

from ymir import broker


def _connection(folder: str) -> Connection:
    return Connection(
        "ymirfs://",
        transport_options={"data_folder_in": folder, "data_folder_out": folder, "store_processed": False},
    )


def test_a_message_is_invisible_to_readers_until_it_is_written_whole(tmp_path, monkeypatch):
    folder = str(tmp_path)
    seen_while_writing: list[list[str]] = []
    original = broker.write_whole

    def watched(path: str, data: bytes) -> None:
        seen_while_writing.append([name for name in os.listdir(folder) if name.endswith(".jobs.msg")])
        original(path, data)

    monkeypatch.setattr(broker, "write_whole", watched)
    with _connection(folder) as connection:
        assert isinstance(connection.transport, broker.Transport)
        channel = connection.default_channel
        channel._put("jobs", {"body": "x" * 10_000})
        assert seen_while_writing == [[]]  # kombu's own transport shows the file, still empty, at this point
        names = os.listdir(folder)
        assert len(names) == 1 and names[0].endswith(".jobs.msg")  # no partial file left behind
        assert channel._get("jobs") == {"body": "x" * 10_000}
        assert os.listdir(folder) == []


def test_a_failed_write_leaves_nothing_in_the_queue(tmp_path, monkeypatch):
    folder = str(tmp_path)

    def full_disk(path: str, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(broker, "write_whole", full_disk)
    with _connection(folder) as connection, pytest.raises(ChannelError, match="Cannot add message"):
        connection.default_channel._put("jobs", {"body": "x"})  # raised as kombu's own transport raises it
    assert os.listdir(folder) == []
