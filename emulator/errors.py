"""The ARM error shape, shared by every part of the emulator."""

from __future__ import annotations

from typing import Any


class ArmError(Exception):
    """An ARM failure answer; raised deep in validation, turned into JSON by the server."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The `{"error": {"code", "message"}}` body every ARM client expects."""
        return {"error": {"code": self.code, "message": self.message}}


def bad_request(message: str, code: str = "BadRequest") -> ArmError:
    """Key Vault reports most validation failures as 400 BadRequest."""
    return ArmError(400, code, message)
