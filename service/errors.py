"""The service's one exception tree.

Every error a caller can see is a ``ServiceError``. The gRPC layer maps each class to one status
code (``service.grpc.errors``); consumers map them to ack/dead-letter decisions. A subclass's
docstring is its default message.
"""

from __future__ import annotations


class ServiceError(Exception):
    """The refund and retry service failed."""

    def __init__(self, message: str | None = None, **context: object) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.context = context
        super().__init__(self.message)


class InvalidArgument(ServiceError):
    """A request field is invalid."""

    def __init__(self, field: str, message: str, **context: object) -> None:
        self.field = field
        super().__init__(f"{field}: {message}", field=field, **context)


class NotFound(ServiceError):
    """The resource does not exist."""


class AlreadyExists(ServiceError):
    """The resource already exists."""


class RequestIdReused(AlreadyExists):
    """This request_id was already used for a different request."""


class FailedPrecondition(ServiceError):
    """The resource is not in a state that allows this call."""


class AlreadyPaid(FailedPrecondition):
    """A failure reported for a payment that was paid already: no retry plan is started (it
    would charge the customer a second time)."""


class SubscriptionCancelled(FailedPrecondition):
    """A failure reported for a payment of a cancelled subscription: no retry plan is started
    (its invoices are not collected after the cancellation)."""


class IllegalTransition(FailedPrecondition):
    """The requested state transition is not allowed."""

    def __init__(self, entity: str, current: str, target: str) -> None:
        super().__init__(
            f"{entity} is {current}; it cannot become {target}",
            current=current,
            target=target,
        )


class InsufficientRefundable(FailedPrecondition):
    """The refund exceeds the refundable amount."""


class PermissionDenied(ServiceError):
    """The caller may not do this."""


class Unauthenticated(ServiceError):
    """The call carries no valid bearer token."""


class OutOfRange(ServiceError):
    """The request asks for something past what is kept."""


class Unavailable(ServiceError):
    """A dependency is unavailable; the call may be retried."""


class ConfigError(ServiceError):
    """A setting is missing or malformed."""
