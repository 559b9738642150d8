"""The embedded default's message broker: kombu's filesystem transport, each message written whole before it
appears in the queue folder.

kombu's own transport creates the message file under its final name and then fills it. A worker listing the
folder in between moved the still-empty file away, failed to decode it and stopped
("Unrecoverable error: JSONDecodeError"): the embedded default's worker died and its queued tasks waited forever.
Here the payload goes to a hidden partial file in the same folder first (its name never matches a queue) and is
renamed to its final name once written, which is atomic on one filesystem.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

SCHEME = "ymirfs"


def write_whole(path: str, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]  # kombu's own signature
        folder = self.data_folder_out
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"  # kombu's naming: its readers sort by it
        try:
            handle, partial = tempfile.mkstemp(prefix=".partial-", dir=folder)  # never ".<queue>.msg": not read
            os.close(handle)
            try:
                write_whole(partial, str_to_bytes(dumps(payload)))
                os.replace(partial, os.path.join(folder, name))
            except BaseException:
                os.unlink(partial)
                raise
        except OSError as exc:
            raise ChannelError(f"Cannot add message {name!r} to {folder!r}") from exc


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES.setdefault(SCHEME, "ymir.broker:Transport")
