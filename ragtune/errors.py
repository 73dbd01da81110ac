"""Domain errors shared by every part. Each says what went wrong and how to fix it.

They are raised inside the code and translated once at the edge: a one-line message
and exit code in the CLI, an OpenAI-shaped error body over HTTP.
"""


class RagtuneError(Exception):
    """Base class. `exit_code` is what the CLI exits with; `param` names the request field at
    fault, for the HTTP error body."""

    exit_code = 1

    def __init__(self, message: str = "", *, param: str | None = None):
        super().__init__(message)
        self.param = param


class UsageError(RagtuneError):
    """The user asked for something that cannot work as given (a missing path...)."""

    exit_code = 2


class ContextLengthExceeded(UsageError):
    """The prompt, or prompt plus the answer asked for, does not fit the model's context window."""


class RequestTooLarge(UsageError):
    """A request body over the size limit."""


class UnsupportedMediaType(UsageError):
    """A body that is not JSON where JSON is expected."""


class RequestTimeout(UsageError):
    """The client sent its request too slowly."""


class Overloaded(RagtuneError):
    """More requests wait than the service will queue; the client should retry later."""

    def __init__(self, message: str, *, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class IndexNotFound(RagtuneError):
    exit_code = 2


class NotFound(RagtuneError):
    """A thing a request names (a job, a document) does not exist."""

    exit_code = 2


class CollectionNotFound(RagtuneError):
    """A request or command named a collection that has no index."""

    exit_code = 2


class IndexIncompatible(RagtuneError):
    """The index was written by a newer ragtune, or with other settings or models."""

    exit_code = 2


class IndexLocked(RagtuneError):
    exit_code = 3


class IndexCorrupt(RagtuneError):
    exit_code = 4


class UnknownModel(RagtuneError):
    """A request named a model or adapter that is not served."""

    exit_code = 2


class BackendUnavailable(RagtuneError):
    """The generation backend cannot be reached (or is not ready yet)."""


class BackendTimeout(RagtuneError):
    """The generation backend did not answer in time."""


class BackendError(RagtuneError):
    """The generation backend answered with an error."""


class Unauthorized(RagtuneError):
    """A request without the right credentials."""


class Forbidden(RagtuneError):
    """A request for something switched off here."""
