"""Error bodies and HTTP statuses of amoCRM API v4, as documented (shared/research/amocrm.md §1, §6, §9).

* Every API error is ``application/problem+json``: ``title``, ``type`` ("https://httpstatus.es/{code}"),
  ``status``, ``detail`` [developers.kommo.com/docs/http-codes].
* 400 with ``validation-errors`` [{"request_id", "errors": [{"code", "path", "detail"}]}] and
  ``"detail": "Request validation failed"`` for bad bodies [http-codes; amocrm-api-php
  AmoCRMApiRequest::checkHttpStatus].
* 401 "Invalid user name or password" for missing, invalid or expired tokens [http-codes].
* 429 carries a BODY field ``retry_after`` (seconds); no ``Retry-After`` header is documented [http-codes].
* 422 "Limit 250 per page" [http-codes].
* The OAuth token endpoint answers in its own problem type (``.../v3/errors/OAuthProblemJson``) with a
  ``hint``: "Некорректный клиент" / "Авторизация клиента не прошла" (401, amocrm/amocrm-api-php#150) and
  "Token has been revoked" (401, amocrm/amocrm-api-php#123).
"""

from __future__ import annotations

from typing import Any

TITLES = {400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
          405: "Method Not Allowed", 422: "Unprocessable Entity", 429: "Too Many Requests",
          500: "ErrInternalServer", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Time-out"}
OAUTH_TYPE = "https://developers.amocrm.ru/v3/errors/OAuthProblemJson"
TOO_MANY = "You have sent too many requests in a given amount of time. Please try again later."


class ApiError(Exception):
    """An API answer other than success; ``body`` is the problem+json document."""

    def __init__(self, status: int, detail: str, **extra: Any):
        super().__init__(f"{status} {detail}")
        self.status = status
        self.detail = detail
        self.extra = extra

    def body(self) -> dict:
        out = {"title": TITLES.get(self.status, "Error"), "type": f"https://httpstatus.es/{self.status}",
               "status": self.status, "detail": self.detail}
        out.update(self.extra)
        return out


def problem(status: int, detail: str, **extra: Any) -> dict:
    return ApiError(status, detail, **extra).body()


def unauthorized() -> ApiError:
    return ApiError(401, "Invalid user name or password")


def too_many(retry_after: float) -> ApiError:
    return ApiError(429, TOO_MANY, retry_after=retry_after)


def blocked() -> ApiError:
    # Choice: the docs do not give the 403 body (issue #318 saw an HTML page); problem+json like the rest.
    return ApiError(403, "Account blocked: too many requests (HTTP 429) in a row")


class ValidationFailed(ApiError):
    """400 with ``validation-errors``; ``problems`` = [(request_id, [(code, path, detail), ...]), ...]."""

    def __init__(self, problems: list[tuple[str, list[tuple[str, str, str]]]]):
        super().__init__(400, "Request validation failed")
        self.problems = problems

    def body(self) -> dict:
        return {"validation-errors": [
            {"request_id": rid, "errors": [{"code": c, "path": p, "detail": d} for c, p, d in errs]}
            for rid, errs in self.problems],
            "title": "Bad Request", "type": "https://httpstatus.es/400", "status": 400,
            "detail": "Request validation failed"}


class OAuthError(Exception):
    def __init__(self, status: int, title: str, detail: str, hint: str | None = None):
        super().__init__(f"{status} {title}: {hint or detail}")
        self.status = status
        self.payload = {"title": title, "type": OAUTH_TYPE, "status": status, "detail": detail}
        if hint:
            self.payload = {"hint": hint, **self.payload}


def bad_oauth_request(hint: str, status: int = 400) -> OAuthError:
    return OAuthError(status, "Некорректный запрос", "В запросе отсутствует ряд параметров или параметры невалидны", hint)


def bad_client() -> OAuthError:
    return OAuthError(401, "Некорректный клиент", "Авторизация клиента не прошла")
