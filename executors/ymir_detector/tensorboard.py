"""TensorBoard scalars without TensorFlow: event files are TFRecords of ``Event`` protobufs, written here by
hand (wall_time, step, and a summary of one simple_value per tag)."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def _event(step: int, *, version: str = "", scalars: dict[str, float] | None = None) -> bytes:
    body = _field(1, 1) + struct.pack("<d", time.time()) + _field(2, 0) + _varint(step)
    if version:
        body += _bytes_field(3, version.encode())
    if scalars:
        values = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", value))
            for tag, value in scalars.items()
        )
        body += _bytes_field(5, values)
    return body


class EventWriter:
    def __init__(self, folder: str | Path) -> None:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        self.file = (path / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}").open("ab")
        self._record(_event(0, version="brain.Event:2"))

    def _record(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self.file.write(header + struct.pack("<I", _masked(header)) + data + struct.pack("<I", _masked(data)))
        self.file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._record(_event(step, scalars=values))

    def close(self) -> None:
        self.file.close()
