"""Error bodies and HTTP statuses, as documented.

Sources (b24restdocs): _includes/system-errors.md (401 NO_AUTH_FOUND / expired_token, 503
QUERY_LIMIT_EXCEEDED, 429 OPERATION_TIME_LIMIT, 405/400 batch errors), api-reference/rest-v3.md (404
ERROR_METHOD_NOT_FOUND), api-reference/crm/contacts/crm-contact-get.md & co. (legacy CRM methods answer
HTTP 400 with an *empty* ``error`` and a text in ``error_description``). Exact texts for expired_token,
QUERY_LIMIT_EXCEEDED and OPERATION_TIME_LIMIT are the ones quoted in b24pysdk's errors docstrings and in
GitHub issues (bitrix-tools/b24-rest-docs#193, leshchenko1979/fast_bitrix24#220).
"""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, code: str, description: str, **extra: str):
        super().__init__(f"{status} {code}: {description}")
        self.status = status
        self.code = code
        self.description = description
        self.extra = extra  # e.g. placement.bind's ``argument`` (widgets/placement-bind.md)

    def body(self) -> dict:
        return {"error": self.code, "error_description": self.description, **self.extra}


def legacy(description: str) -> ApiError:
    """Legacy CRM error: HTTP 400, empty code."""
    return ApiError(400, "", description)


def core(description: str) -> ApiError:
    return ApiError(400, "ERROR_CORE", description)


NO_AUTH = (401, "NO_AUTH_FOUND", "Wrong authorization data")
INSUFFICIENT_SCOPE = (401, "insufficient_scope", "The request requires higher privileges than provided by the webhook token")
EXPIRED = (401, "expired_token", "The access token provided has expired.")
METHOD_NOT_FOUND = (404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
QUERY_LIMIT = (503, "QUERY_LIMIT_EXCEEDED", "Too many requests")
OPERATION_LIMIT = (429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.")
HTTPS_REQUIRED = (400, "INVALID_REQUEST", "Https required.")
BATCH_NOT_ALLOWED = (405, "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage")
BATCH_LENGTH = (400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
INTERNAL = (500, "INTERNAL_SERVER_ERROR", "Internal server error")


def err(spec: tuple[int, str, str]) -> ApiError:
    return ApiError(*spec)
