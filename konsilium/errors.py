"""The one error tree.

Every failure a client can see is a `GatewayError` subclass that knows its OpenAI `type`, its
string `code`, the `param` it blames and its HTTP status. The gateway renders all of them with
one handler (`gateway/errors.py`); backends translate foreign exceptions into this tree at their
edge, so nothing else ever reaches a client.
"""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    """Base of every client-visible failure; renders as OpenAI's `{"error": {...}}`."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"
    # The target itself is at fault (down, crashed, failing every request): only these count
    # toward its circuit breaker, so one client's bad request cannot close a model to everyone.
    target_fault: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.retry_after = retry_after


class InvalidRequestError(GatewayError):
    """The client sent something we cannot accept: malformed JSON, a wrong type, a bad value."""

    status = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class UnsupportedParameterError(InvalidRequestError):
    """A valid OpenAI parameter that the chosen model or backend cannot honour."""

    default_code = "unsupported_parameter"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class WrongModelKindError(InvalidRequestError):
    """The model exists but serves another endpoint: an embedding model asked to generate, or a
    generative model asked for embeddings."""

    default_code = "unsupported_model"


class ModelNotFoundError(InvalidRequestError):
    status = 404
    default_code = "model_not_found"


class AdapterNotFoundError(ModelNotFoundError):
    """A declared LoRA adapter whose path holds no adapter."""

    default_code = "adapter_not_found"


class AdapterRefusedError(InvalidRequestError):
    """A LoRA adapter the base model's server refuses (rank, architecture)."""

    default_code = "adapter_incompatible"


class NotFoundError(InvalidRequestError):
    status = 404
    default_code = "not_found"


class MethodNotAllowedError(InvalidRequestError):
    status = 405
    default_code = "method_not_allowed"


class AuthenticationError(InvalidRequestError):
    """No API key, or one that is unknown or revoked (OpenAI's 401 `invalid_api_key`)."""

    status = 401
    default_code = "invalid_api_key"


class PermissionDeniedError(InvalidRequestError):
    status = 403
    default_code = "permission_denied"


class CloudConsentRequiredError(PermissionDeniedError):
    """Only a cloud target could answer, and the request did not allow one."""

    default_code = "cloud_consent_required"


class ConflictError(InvalidRequestError):
    """The request contradicts the current state (unloading a model that is serving requests)."""

    status = 409
    default_code = "conflict"


class RequestTooLargeError(InvalidRequestError):
    status = 413
    default_code = "request_too_large"


class UriTooLongError(InvalidRequestError):
    status = 414
    default_code = "uri_too_long"


class HeadersTooLargeError(InvalidRequestError):
    status = 431
    default_code = "request_header_fields_too_large"


class ClientDisconnectedError(InvalidRequestError):
    """The client left before its answer was ready; nobody reads the rendered body (nginx's 499)."""

    status = 499
    default_code = "client_disconnected"


class RateLimitError(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class BackendError(GatewayError):
    """A backend failed while serving a request (crash, bad answer, upstream 5xx)."""

    status = 502
    default_code = "backend_error"
    target_fault = True


class RequestFailedError(BackendError):
    """The backend failed on this one request and stays healthy (the worker reported the failure
    and carries on): a 502 for the client, not a strike against the model."""

    target_fault = False


class BackendUnavailableError(BackendError):
    """A backend cannot take requests right now (not loaded, unreachable, loading failed)."""

    status = 503
    default_code = "model_unavailable"


class KeyStoreUnavailableError(BackendUnavailableError):
    """The keys have not been read yet (the store has not answered since start-up)."""

    default_code = "key_store_unavailable"
    target_fault = False


class ModelLoadError(BackendUnavailableError):
    """A model could not be loaded: a bad file, a wrong checksum, a worker that would not start."""

    default_code = "model_load_failed"


class BackendTimeoutError(BackendError):
    status = 504
    default_code = "backend_timeout"


class InternalError(GatewayError):
    """A bug in Konsilium; the message never carries a traceback."""

    status = 500
    default_code = "internal_error"


class ConfigError(Exception):
    """Configuration or manifest problems, found at start-up, each naming the file and the field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class InvalidConfigError(InvalidRequestError):
    """A reload found the config or a manifest invalid: refused, the running config stays."""

    default_code = "invalid_config"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("the config was not reloaded: " + "; ".join(problems))
        self.problems = problems
