"""multipart/form-data bodies (Yandex and VK uploads): field name -> (filename or None, bytes)."""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import HTTP


def parse(content_type_header: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type_header.encode("latin-1") + b"\r\n\r\n" + body
    )
    out: dict[str, tuple[str | None, bytes]] = {}
    if not message.is_multipart():
        return out
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        out[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return out
