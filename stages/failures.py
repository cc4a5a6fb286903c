"""Failure classes: a transient failure (the world was briefly broken) is retried by the next run;
a permanent one (the data itself is bad) is final.

Transient: a backend unreachable or answering 5xx/429 after its retries, out of memory (host or
GPU), a Ray worker or node lost, object-store and network I/O errors, timeouts. Permanent:
undecodable media, an invalid model answer after its attempts, a missing file, a rule.
"""

from __future__ import annotations

import errno
import re

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


# The machine's own storage failing: a full disk or quota, an I/O error, a file system remounted
# read-only. Transient wherever they occur (PyAV's errors included): freeing space fixes them.
LOCAL_IO_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}
_LOCAL_IO_REASON = re.compile(r"\[Errno (" + "|".join(str(n) for n in sorted(LOCAL_IO_ERRNOS)) + r")\]")


def _causes(exc: BaseException | None):
    """The exception, then what caused it (`raise ... from`, the one being handled, a Ray task's cause)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        wrapped = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError: the task's own exception
        exc = wrapped if isinstance(wrapped, BaseException) else exc.__cause__ or exc.__context__


def local_io_error(exc: BaseException) -> OSError | None:
    """The local-storage error (LOCAL_IO_ERRNOS) behind `exc`, if one is."""
    return next((e for e in _causes(exc) if isinstance(e, OSError) and e.errno in LOCAL_IO_ERRNOS), None)


def failed_on_local_io(reason: str | None) -> bool:
    """Whether a failed row's reason is a local-storage error (its `[Errno N]`, as OSError prints it)."""
    return bool(reason and _LOCAL_IO_REASON.search(reason))


def is_transient(exc: BaseException) -> bool:
    """Whether a later run may succeed where this exception failed (follows `raise ... from`)."""
    if local_io_error(exc) is not None:
        return True
    for exc in _causes(exc):
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
    return False


def failed(code: str, exc: BaseException) -> dict:
    """The status fields of a row that failed with `exc`; `code` leads the reason."""
    return {"status": FAILED, "reason": f"{code}: {type(exc).__name__}: {exc}", "transient": is_transient(exc)}
