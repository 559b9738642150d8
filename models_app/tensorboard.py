"""Read scalar curves from TensorBoard event files without TensorFlow.

An event file is a sequence of TFRecords (length, crc, data, crc) holding ``Event`` protobufs; a scalar is a
summary value with ``simple_value`` (what PyTorch's SummaryWriter and our detector write) or a one-element
float tensor (newer TensorFlow). The crcs are not checked: a torn last record simply ends the reading. Reading
is bounded (files, bytes, points per tag) so a hostile file cannot exhaust memory.
"""

from __future__ import annotations

import struct
from pathlib import Path

MAX_BYTES = 64 * 2**20
MAX_POINTS = 5000


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one protobuf message; bytes for length-delimited fields."""
    out: list[tuple[int, int, int | bytes]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i : i + size], i + size
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


def _b(value: int | bytes) -> bytes:
    return value if isinstance(value, bytes) else b""


def _scalar(value_message: bytes) -> tuple[str, float] | None:
    tag, number = "", None
    for field, wire, value in _fields(value_message):
        if field == 1 and wire == 2:
            tag = _b(value).decode("utf-8", "replace")
        elif field == 2 and wire == 5:
            number = struct.unpack("<f", _b(value))[0]
        elif field == 8 and wire == 2:  # TensorProto: float_val (5, packed) or double_val (6)
            for t_field, t_wire, t_value in _fields(_b(value)):
                raw = _b(t_value)
                if t_field == 5 and t_wire == 2 and len(raw) >= 4:
                    number = struct.unpack("<f", raw[:4])[0]
                elif t_field == 5 and t_wire == 5:
                    number = struct.unpack("<f", raw)[0]
                elif t_field == 6 and t_wire == 1:
                    number = struct.unpack("<d", raw)[0]
    if tag and number is not None and number == number:
        return tag, float(number)
    return None


def _event(record: bytes, curves: dict[str, dict[int, float]]) -> None:
    event = _fields(record)
    step = next((v for f, _w, v in event if f == 2 and isinstance(v, int)), 0)
    for f, w, summary in event:
        if f != 5 or w != 2:
            continue
        for vf, vw, value in _fields(_b(summary)):
            if vf == 1 and vw == 2:
                point = _scalar(_b(value))
                if point and len(curves.setdefault(point[0], {})) < MAX_POINTS:
                    curves[point[0]][step] = point[1]


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the event files under ``folder``: (step, value) points in step order."""
    curves: dict[str, dict[int, float]] = {}
    budget = MAX_BYTES
    files = (
        sorted(p for p in folder.rglob("*tfevents*") if p.is_file() and not p.is_symlink()) if folder.is_dir() else []
    )
    for file in files:
        data = file.read_bytes()[:budget]
        budget -= len(data)
        i = 0
        while i + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            start, end = i + 12, i + 12 + length
            if end + 4 > len(data):
                break
            i = end + 4
            try:
                _event(data[start:end], curves)
            except (ValueError, struct.error):  # a damaged record: what came before is kept
                break
        if budget <= 0:
            break
    return {tag: sorted(points.items()) for tag, points in sorted(curves.items())}
