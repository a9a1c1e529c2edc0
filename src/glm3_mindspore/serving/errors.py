"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the right status.

Request validation (FastAPI's default is a 422 with its own body) becomes a
400 naming the field as OpenAI writes it (``messages[0].role``).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """An error the client gets as OpenAI's error body."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = INVALID_REQUEST) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)

    def sse_data(self) -> str:
        """The error as one server-sent event's data, for a stream that fails after it started."""
        return json.dumps(self.body(), ensure_ascii=False)


def field_path(location: Sequence[Any]) -> Optional[str]:
    """``("body", "messages", 0, "role")`` -> ``"messages[0].role"``; None for the body itself."""
    parts = [p for p in location if p != "body"]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _is_union_branch(part):
            path += f".{part}" if path else str(part)
    return path or None


def _is_union_branch(part: str) -> bool:
    """pydantic names the union member it tried (``str``, ``list[TextPart]``): not a field."""
    return part in ("str", "int", "float", "bool", "dict[str,any]") or "[" in part or part[:1].isupper()


def validation_error(exc: RequestValidationError) -> APIError:
    """The first problem pydantic found, naming its field."""
    error = exc.errors()[0]
    if error["type"] == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}",
                        code="invalid_json")
    param = field_path(error["loc"])
    if error["type"] == "missing" and param is None:
        return APIError(400, "the request needs a JSON body", code="invalid_json")
    where = f"'{param}'" if param else "the body"
    return APIError(400, f"{where}: {error['msg']}", param=param, code=error["type"])


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app returns is OpenAI's error body."""

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        kind = NOT_FOUND if exc.status_code == 404 else INVALID_REQUEST
        return APIError(exc.status_code, str(exc.detail), kind=kind).response()

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("request failed")
        return APIError(500, f"internal error: {type(exc).__name__}", kind=SERVER_ERROR).response()
