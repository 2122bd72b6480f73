"""aioresty: async Python handlers behind lua-resty-ffi's API, inside stock proxies."""

from .app import App
from .filters import FilterRequest, FilterResponse, Headers, Response
from .handler import (
    RC_BAD_REQUEST,
    RC_BAD_RESULT,
    RC_CANCELLED,
    RC_ERROR,
    RC_NO_METHOD,
    RC_TIMEOUT,
    Handler,
    HandlerError,
)

__version__ = "0.1.0"

__all__ = [
    "RC_BAD_REQUEST",
    "RC_BAD_RESULT",
    "RC_CANCELLED",
    "RC_ERROR",
    "RC_NO_METHOD",
    "RC_TIMEOUT",
    "App",
    "FilterRequest",
    "FilterResponse",
    "Handler",
    "HandlerError",
    "Headers",
    "Response",
    "__version__",
]
