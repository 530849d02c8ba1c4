"""Errors as OpenAI's API writes them, so clients show the message: {"error": {"message", "type", "param",
"code"}}. Every 4xx / 5xx answer of the server has this shape, whatever produced it: an ApiError raised by a
handler, FastAPI's request validation (400, `param` names the field), an unknown route (404) or a crash (500,
the server keeps running)."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("tunelab.serve")

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
         404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
         413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
         429: "rate_limit_error", 500: "server_error", 503: "server_error", 504: "server_error"}


class ApiError(Exception):
    """A request the server answers with `status` and an OpenAI-style error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}


def field_path(loc) -> str | None:
    """('body', 'messages', 0, 'content') -> 'messages[0].content'; None for the body as a whole."""
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def validation_error(exc: RequestValidationError) -> ApiError:
    """The first problem of a request body, as one message naming the field (all problems are listed)."""
    problems, first_param = [], None
    for err in exc.errors():
        param = field_path(err.get("loc", ()))
        kind, msg = err.get("type", ""), err.get("msg", "invalid")
        if kind == "json_invalid":
            problems.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', msg)}); send a "
                            "JSON object with Content-Type: application/json")
            param = None
        elif kind == "extra_forbidden":
            problems.append(f"Unrecognized request argument supplied: {param}")
        elif kind == "missing":
            problems.append(f"'{param}' is a required property" if param else "the request needs a JSON body")
        elif kind == "model_attributes_type" and param is None:
            problems.append("the body must be a JSON object")
        else:
            problems.append(f"{param}: {msg}" if param else msg)
        first_param = first_param or param
    return ApiError(400, "; ".join(problems) or "invalid request", first_param)


def install(app: FastAPI) -> None:
    """Answer every error with an OpenAI-style error object."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "POST" and kind != "application/json":
            # FastAPI reads only JSON-typed bodies; kept that way on purpose: a web page can send a form or
            # text/plain to 127.0.0.1 from any site without asking, but not application/json
            return ApiError(415, f"the body was sent as {kind or 'no content type'}; send JSON with the header "
                                 "'Content-Type: application/json' (curl: -H 'Content-Type: application/json')",
                            None, "unsupported_media_type").response()
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = (f"no route {request.method} {request.url.path}; GET /v1/models lists the model, the "
                       "endpoints this server offers are in the README section 'Serving'")
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return ApiError(exc.status_code, message, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("request %s %s failed", request.method, request.url.path)
        return ApiError(500, f"the server failed on this request ({type(exc).__name__}: {exc}); it keeps "
                             "running, the server's log has the traceback").response()
