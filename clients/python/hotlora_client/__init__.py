"""hotlora's Python client: chat with LoRA adapters and blends, stream, and manage the adapter store.

    from hotlora_client import Client

    with Client() as client:  # $HOTLORA_BASE_URL (default http://127.0.0.1:8000), $HOTLORA_API_KEY
        print(client.chat("Hello!", adapter="piglatin", max_tokens=64).text)

`AsyncClient` has the same methods, awaited. Errors are in `hotlora_client.errors`; `hotlora-chat` is the
terminal chat.
"""

from ._client import Adapters, AsyncClient, AsyncStream, Client, Files, FineTuning, Jobs, Models, Stream
from ._version import __version__
from .errors import (
    AdapterNotReadyError,
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    HotloraError,
    IncompleteOutputError,
    JobNotDoneError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServerError,
)
from .fine_tuning_types import File, FileDeleted, FineTuningJob, JobCheckpoint, JobEvent, Page
from .types import (
    Adapter,
    AdapterDeleted,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    DetokenizeResponse,
    ErrorDetail,
    FunctionCall,
    Health,
    Model,
    ParsedChatCompletion,
    TokenizeResponse,
    ToolCall,
    Usage,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "Adapter",
    "AdapterDeleted",
    "AdapterNotReadyError",
    "Adapters",
    "AsyncClient",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "ChatCompletion",
    "ChatCompletionChunk",
    "Client",
    "Completion",
    "ConflictError",
    "DetokenizeResponse",
    "ErrorDetail",
    "File",
    "FileDeleted",
    "Files",
    "FineTuning",
    "FineTuningJob",
    "FunctionCall",
    "Health",
    "HotloraError",
    "IncompleteOutputError",
    "JobCheckpoint",
    "JobEvent",
    "JobNotDoneError",
    "Jobs",
    "Model",
    "Models",
    "NotFoundError",
    "Page",
    "ParsedChatCompletion",
    "PayloadTooLargeError",
    "RateLimitError",
    "ServerError",
    "Stream",
    "TokenizeResponse",
    "ToolCall",
    "Usage",
    "__version__",
]
