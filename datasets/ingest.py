"""The parallel passes of an import: annotation parsing and the image pass, over worker processes.

Workers get plain values (a source spec, names, the store folder, the pixel limit): they never touch the
database. They come from a fork server (started once per process, so children start cheaply and never inherit
another thread's held lock); measured here, billiard's pool was 3x slower than the standard library's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from datasets.archive import CheckedReader, Limits, SourceRefused
from datasets.formats import FormatError, RawAnnotation, clip_annotation, parse_voc
from datasets.store import ImageInfo, ImageRejected, inspect_image, store_bytes

Spec = tuple[str, str, Limits]
# key, image name, info (None: skipped), why skipped, new bytes stored, gt, predictions, [(file, parse error)]
Ingested = tuple[
    str, str, ImageInfo | None, str, bool, RawAnnotation | None, RawAnnotation | None, list[tuple[str, str]]
]
T = TypeVar("T")
CHUNK = 64
_START_METHOD = "forkserver" if os.name == "posix" else "spawn"
IN_PROCESS_BELOW = 256


def ingest_chunk(
    spec: Spec, store: str, max_pixels: int, items: Sequence[tuple[str, str, str | None, str | None]]
) -> list[Ingested]:
    """Per image: read, hash, header, store the bytes once; parse its VOC ground truth and predictions."""
    reader = _reader(spec)
    out: list[Ingested] = []
    for key, name, gt_name, pred_name in items:
        annotations: list[RawAnnotation | None] = []
        errors: list[tuple[str, str]] = []
        for xml_name in (gt_name, pred_name):
            annotation = None
            if xml_name:
                try:
                    annotation = parse_voc(reader.read(xml_name))
                except (FormatError, SourceRefused) as exc:
                    errors.append((xml_name, str(exc)))
            annotations.append(annotation)
        try:
            data = reader.read(name)
            info = inspect_image(data, max_pixels)
        except (ImageRejected, SourceRefused) as exc:
            out.append((key, name, None, str(exc), False, None, None, errors))
            continue
        stored = store_bytes(info.sha1, data, Path(store))
        for annotation in annotations:
            if annotation is not None:
                clip_annotation(annotation, info.width, info.height)
        out.append((key, name, info, "", stored, annotations[0], annotations[1], errors))
    return out


_READERS: dict[Spec, CheckedReader] = {}


def _reader(spec: Spec) -> CheckedReader:
    """One open reader per source and process: a zip's central directory is read once, not once per chunk."""
    if spec not in _READERS:
        _READERS[spec] = CheckedReader(spec)
    return _READERS[spec]


def _close_readers() -> None:
    while _READERS:
        _READERS.popitem()[1].close()


def _call(args: tuple[Callable[..., list[Any]], tuple[Any, ...]]) -> list[Any]:
    function, arguments = args
    return function(*arguments)


def run_parallel(
    function: Callable[..., list[T]],
    fixed: tuple[Any, ...],
    work: Sequence[Any],
    workers: int,
    progress: Callable[[int], None] = lambda _n: None,
) -> Iterator[T]:
    """Results of ``function(*fixed, chunk)`` over chunks of ``work``, in chunk order."""
    chunks = [work[i : i + CHUNK] for i in range(0, len(work), CHUNK)]
    if workers <= 1 or len(work) < IN_PROCESS_BELOW:
        try:
            for chunk in chunks:
                yield from function(*fixed, chunk)
                progress(len(chunk))
        finally:
            _close_readers()
        return
    import multiprocessing

    # Celery's prefork children are daemonic, and the standard library refuses children to daemonic
    # processes. The pool is ours, lives only inside this call and is torn down before we return, so the
    # flag is lifted for its lifetime (billiard's pool, which allows it, was 3x slower here).
    me = multiprocessing.current_process()
    daemonic = me._config.get("daemon")  # type: ignore[attr-defined]
    authkey = me._config.get("authkey")  # type: ignore[attr-defined]
    me._config["daemon"] = False  # type: ignore[attr-defined]
    # a prefork child's key is billiard's AuthenticationString, which refuses the pickling that starting a fork
    # server needs; the standard library's own wrapper of the same bytes allows it while spawning
    me._config["authkey"] = multiprocessing.process.AuthenticationString(bytes(authkey or b""))  # type: ignore[attr-defined]
    try:
        # forkserver, not fork: a Celery worker has threads (broker heartbeats, connection pools), and a child
        # forked while one of them held a lock waits on it forever (seen: the thumbnail pass of a 1,181-image
        # import hung its worker). The fork server is started once per process; children fork from it.
        with multiprocessing.get_context(_START_METHOD).Pool(processes=min(workers, len(chunks))) as pool:
            for result in pool.imap(_call, [(function, (*fixed, chunk)) for chunk in chunks]):
                yield from result
                progress(len(result))
    finally:
        me._config["daemon"] = daemonic  # type: ignore[attr-defined]
        me._config["authkey"] = authkey  # type: ignore[attr-defined]


def worker_count(setting: int) -> int:
    return setting if setting > 0 else (os.cpu_count() or 1)
