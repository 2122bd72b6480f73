"""Handlers: one ``async def`` with its codec and timeout, what a call answers
(rc values, error texts), shared by the App (app.py), the Envoy filter hooks
(filters.py) and the runtime (runtime.py).  Imports nothing of theirs."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgpack

from . import _native

Codec = Literal["bytes", "msgpack", "json"]
CODECS = ("bytes", "msgpack", "json")
HandlerFn = Callable[[Any], Coroutine[Any, Any, Any]]

# rc values answered to Lua (ok == false, res_or_rc == rc, err == message);
# their one source is native/core/aioresty_core.h (AR_RC_*).
RC_ERROR: Final = _native.RC_ERROR  # the handler raised
RC_NO_METHOD: Final = _native.RC_NO_METHOD  # no handler for the called method
RC_TIMEOUT: Final = _native.RC_TIMEOUT  # the handler ran longer than its timeout
RC_BAD_REQUEST: Final = _native.RC_BAD_REQUEST  # the payload could not be decoded
RC_BAD_RESULT: Final = _native.RC_BAD_RESULT  # the result could not be encoded
RC_CANCELLED: Final = _native.RC_CANCELLED  # the caller went away, or the runtime stopped

DEFAULT_TIMEOUT = 30.0  # seconds a call may run unless the App or handler says otherwise


def safe_text(text: str) -> bytes:
    """UTF-8 that always encodes: lone surrogates become ``\\udcxx`` escapes."""
    return text.encode("utf-8", "backslashreplace")


def describe(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when its ``__str__`` raises."""
    try:
        return str(exc)
    except BaseException:
        return f"<{type(exc).__name__}: str() failed>"


def last_line(exc: BaseException) -> str:
    """The last line of the exception's traceback (``ValueError: bad x``)."""
    lines = traceback.format_exception_only(type(exc), exc)
    return lines[-1].strip() if lines else type(exc).__name__


def check_timeout(timeout: Any, what: str) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {timeout!r}")
    if timeout == float("inf"):
        raise ValueError(f"{what} must be finite: every call has a bounded timeout")
    return float(timeout)


class HandlerError(Exception):
    """An answer with ``rc != 0``: raise it to choose the rc and the message."""

    def __init__(self, message: str, rc: int = RC_ERROR) -> None:
        if rc == 0:
            raise ValueError("HandlerError needs a non-zero rc")
        super().__init__(message)
        self.rc = rc
        self.message = message


@dataclass(frozen=True)
class Handler:
    name: str
    fn: HandlerFn
    codec: Codec
    timeout: float
    decode: Callable[[bytes], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        dec = _identity if self.codec == "bytes" else self._decode
        object.__setattr__(self, "decode", dec)

    def _decode(self, payload: bytes) -> Any:
        try:
            if self.codec == "json":
                return json.loads(payload)
            return msgpack.unpackb(payload, raw=False)
        except Exception as e:
            raise HandlerError(
                f"aioresty: '{self.name}' expects a {self.codec} payload: {e}", RC_BAD_REQUEST
            ) from None

    def encode(self, result: Any) -> bytes | None:
        if self.codec == "json":
            try:
                return json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode()
            except (TypeError, ValueError) as e:
                raise HandlerError(
                    f"aioresty: '{self.name}' returned a value json cannot encode: {e}",
                    RC_BAD_RESULT,
                ) from None
        if self.codec == "msgpack":
            try:
                return msgpack.packb(result, use_bin_type=True)  # type: ignore[no-any-return]
            except Exception as e:
                raise HandlerError(
                    f"aioresty: '{self.name}' returned a value msgpack cannot pack: {e}",
                    RC_BAD_RESULT,
                ) from None
        if result is None or isinstance(result, bytes):
            return result
        if isinstance(result, str):
            try:
                return result.encode()
            except UnicodeEncodeError as e:
                raise HandlerError(
                    f"aioresty: '{self.name}' returned a str that is not valid UTF-8 ({e.reason} "
                    f"at position {e.start})",
                    RC_BAD_RESULT,
                ) from None
        if isinstance(result, (bytearray, memoryview)):
            return bytes(result)
        raise HandlerError(
            f"aioresty: '{self.name}' returned {type(result).__name__}; return bytes or str, "
            "or register it with codec='json' or codec='msgpack'",
            RC_BAD_RESULT,
        )


def _identity(payload: bytes) -> bytes:
    return payload


def error_answer(handler: str, exc: BaseException) -> tuple[int, str]:
    """The (rc, message) answered for an exception escaping a handler."""
    if isinstance(exc, HandlerError):
        msg = exc.message if isinstance(exc.message, str) else describe(exc)
        return exc.rc, msg
    return RC_ERROR, f"aioresty: handler '{handler}' raised {type(exc).__name__}: {describe(exc)}"
