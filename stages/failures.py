"""Failure classes: a transient failure (the world was briefly broken) is retried by the next run;
a permanent one (the data itself is bad) is final.

Transient: a backend unreachable or answering 5xx/429 after its retries, out of memory (host or
GPU), a Ray worker or node lost, object-store and network I/O errors, timeouts. Permanent:
undecodable media, an invalid model answer after its attempts, a missing file, a rule.
"""

from __future__ import annotations

from vidcurate.schemas.tables import FAILED

# Exception classes (matched by name anywhere in the class hierarchy, so optional packages need
# not be imported) whose failures go away by themselves.
TRANSIENT_CLASSES = {
    "TimeoutError",
    "ConnectionError",
    "MemoryError",
    "OutOfMemoryError",  # torch.cuda and ray.exceptions
    "RayActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "WorkerCrashedError",
    "NodeDiedError",
    "ObjectLostError",
    "OwnerDiedError",
    "EndpointConnectionError",  # botocore
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ClientConnectionError",  # aiohttp
    "ServerDisconnectedError",
    "TransportError",  # httpx
}
# OSErrors that describe the data or its place, not the moment: never retried.
PERMANENT_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_transient(exc: BaseException) -> bool:
    """Whether a later run may succeed where this exception failed (follows `raise ... from`)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        flag = getattr(exc, "transient", None)
        if isinstance(flag, bool):
            return flag
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "FFmpegError" in names:  # PyAV: the media itself (its OSError subclasses included)
            return False
        if names & TRANSIENT_CLASSES:
            return True
        if isinstance(exc, OSError) and not isinstance(exc, PERMANENT_OS_ERRORS):
            return True  # I/O: object stores (s3fs maps 5xx and throttling to OSError), disks, sockets
        exc = exc.__cause__ or exc.__context__
    return False


def failed(code: str, exc: BaseException) -> dict:
    """The status fields of a row that failed with `exc`; `code` leads the reason."""
    return {"status": FAILED, "reason": f"{code}: {type(exc).__name__}: {exc}", "transient": is_transient(exc)}
