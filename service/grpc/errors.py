"""Domain errors -> gRPC status codes with google.rpc details; anything else -> INTERNAL with
no stack trace on the wire (it is logged with the request's method)."""

from __future__ import annotations

import logging
from typing import NoReturn

import asyncpg
import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service import errors

log = logging.getLogger(__name__)

CODES: tuple[tuple[type[errors.ServiceError], int], ...] = (
    (errors.InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (errors.NotFound, code_pb2.NOT_FOUND),
    (errors.AlreadyExists, code_pb2.ALREADY_EXISTS),
    (errors.FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (errors.PermissionDenied, code_pb2.PERMISSION_DENIED),
    (errors.Unauthenticated, code_pb2.UNAUTHENTICATED),
    (errors.Unavailable, code_pb2.UNAVAILABLE),
    (errors.OutOfRange, code_pb2.OUT_OF_RANGE),
)


def to_status(exc: errors.ServiceError) -> status_pb2.Status:
    code = next((c for cls, c in CODES if isinstance(exc, cls)), code_pb2.INTERNAL)
    status = status_pb2.Status(code=code, message=exc.message)
    detail = any_pb2.Any()
    if isinstance(exc, errors.InvalidArgument):
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=exc.field, description=exc.message
                    )
                ]
            )
        )
        status.details.append(detail)
    elif isinstance(exc, errors.FailedPrecondition):
        detail.Pack(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=type(exc).__name__, description=exc.message
                    )
                ]
            )
        )
        status.details.append(detail)
    return status


async def abort(
    context: grpc.aio.ServicerContext[object, object], exc: BaseException, method: str
) -> NoReturn:
    if isinstance(exc, errors.ServiceError):
        status = rpc_status.to_status(to_status(exc))
        context.set_trailing_metadata(status.trailing_metadata)
        await context.abort(status.code, status.details)
    if isinstance(exc, (asyncpg.PostgresConnectionError, OSError, asyncpg.InterfaceError)):
        log.warning(
            "database unavailable during %s: %s",
            method,
            exc,
            extra={"action": "rpc.unavailable", "method": method},
        )
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the database is unavailable; retry")
    if isinstance(exc, asyncpg.SerializationError | asyncpg.DeadlockDetectedError):
        await context.abort(grpc.StatusCode.ABORTED, "concurrent update; retry the call")
    log.exception(
        "internal error in %s",
        method,
        exc_info=exc,
        extra={"action": "rpc.internal_error", "method": method},
    )
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; it has been logged")
