"""Request bodies read with a cap, for the management API's JSON and the console's
forms alike."""

from __future__ import annotations

from starlette.requests import Request

from patgate.middleware.errors import PayloadTooLarge

__all__ = ["read_capped"]


async def read_capped(request: Request, limit: int, what: str = "request body") -> bytes:
    """The body, read as it arrives and refused (413) the moment it passes ``limit``: a
    declared Content-Length over it is refused before reading anything, and a chunked
    body is never buffered beyond it, so no caller can make the server hold more."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"{what} larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{what} larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
