"""Error bodies of the API, and the route class that answers with them.

Request validation errors are rendered here without the rejected input, so a secret sent
with a typo never comes back in a response (FastAPI's default 422 echoes the input).
"""

from collections.abc import Callable, Coroutine
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException  # what FastAPI raises for unreadable bodies

from domain.blueprint_file import field_path
from store import StoreError


class FieldError(BaseModel):
    field: str = Field(description="Where: body.scope, query.limit, applications[0].name, ...")
    message: str
    type: str


class ErrorBody(BaseModel):
    # Its public path (starter.api exports it): the whole app's OpenAPI tells it from
    # starter.app's ErrorBody by module, as the schema `starter__api__ErrorBody`.
    __module__ = "starter.api"

    error: Literal[
        "unauthorized", "forbidden", "not_found", "conflict", "invalid", "too_large",
        "unsupported_media_type",
    ]
    message: str
    object: str | None = Field(None, description="The object the error is about")
    field: str | None = Field(None, description="The field the error is about")
    errors: list[FieldError] | None = Field(None, description="Every invalid field")


class ApiError(Exception):
    def __init__(self, status: int, body: ErrorBody, headers: dict[str, str] | None = None):
        super().__init__(body.message)
        self.status, self.body, self.headers = status, body, headers


def unauthorized(message: str) -> ApiError:
    return ApiError(401, ErrorBody(error="unauthorized", message=message),
                    {"WWW-Authenticate": "Bearer"})


def forbidden(message: str, object: str | None = None) -> ApiError:
    return ApiError(403, ErrorBody(error="forbidden", message=message, object=object))


_STATUS = {"not_found": 404, "conflict": 409, "invalid": 422}


def field_errors(errors: Any, prefix: tuple[str, ...] = ()) -> list[FieldError]:
    # Only loc, msg and type: never `input` or `ctx`, which may hold what was sent.
    return [
        FieldError(field=field_path((*prefix, *e["loc"])),
                   message=str(e["msg"]).removeprefix("Value error, "), type=str(e["type"]))
        for e in errors
    ]


def _invalid(errors: list[FieldError], message: str | None = None) -> JSONResponse:
    summary = message or "; ".join(f"{e.field}: {e.message}" for e in errors)
    body = ErrorBody(error="invalid", message=summary,
                     field=errors[0].field if errors else None, errors=errors)
    return JSONResponse(body.model_dump(mode="json"), status_code=422)


class ApiRoute(APIRoute):
    """Turns store, auth and validation errors into ErrorBody responses."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as error:
                return JSONResponse(error.body.model_dump(mode="json"), status_code=error.status,
                                    headers=error.headers)
            except StoreError as error:
                body = ErrorBody(error=error.code, message=error.message,  # type: ignore[arg-type]
                                 object=error.object, field=error.field)
                return JSONResponse(body.model_dump(mode="json"), status_code=_STATUS[error.code])
            except RequestValidationError as error:
                return _invalid(field_errors(error.errors()))
            except HTTPException as error:
                if error.status_code != 400:
                    raise
                # FastAPI's "There was an error parsing the body" (e.g. not UTF-8).
                return _invalid([FieldError(field="body", message=str(error.detail),
                                            type="body_unreadable")])
            except ValidationError as error:  # a model built in a handler from path + body
                return _invalid(field_errors(error.errors(include_input=False), ("body",)))

        return route_handler


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` entries of these error statuses, each an ErrorBody."""
    text = {401: "Missing or invalid token", 403: "The token may not do this",
            404: "Not found", 409: "Conflicts with what is stored", 422: "Invalid request"}
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


def api_router() -> APIRouter:
    """A router of API routes: ErrorBody answers, and 401 and 422 documented on each."""
    return APIRouter(route_class=ApiRoute, responses=error_responses(401, 422))
