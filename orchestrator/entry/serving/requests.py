"""API requests: JSON or multipart bodies read within a size bound, then checked into VideoRequests."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from orchestrator.core.config import ServeConfig
from orchestrator.core.errors import UserError
from orchestrator.core.rules import check_seconds, seed_value

VIDEO_ID = re.compile(r"^video_[0-9a-f]{32}$")


class ApiError(Exception):
    """An error answered as an HTTP status with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_request",
                 retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": "invalid_request_error" if self.status < 500 else
                          "server_error", "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class VideoRequest:
    """A checked request for a new video, or for an extension of `extends`."""

    prompt: str
    seconds: float
    size: str
    model: str
    seed: int
    extends: str = ""
    live: bool = False  # runs until stopped (or serve.max_live_seconds): `seconds` is that bound


def new_video_id() -> str:
    """128 random bits: ids cannot be guessed, and match VIDEO_ID so they never name a path outside the store."""
    return "video_" + secrets.token_hex(16)


def check_id(video_id: str) -> str:
    if not VIDEO_ID.match(video_id):
        raise ApiError(404, "no video with that id", "video_id", "not_found")
    return video_id


async def read_fields(request, limit: int) -> dict:
    """The request body as a dict: JSON, multipart/form-data or urlencoded form; at most `limit` bytes.
    Form keys like video[id] become nested dicts."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, f"request body larger than {limit} bytes", code="body_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"request body larger than {limit} bytes", code="body_too_large")
    request._body = bytes(body)  # starlette reads forms from the cached body
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form()
        except Exception as err:  # the multipart parser's errors have no common base
            raise ApiError(400, f"malformed form body: {err}") from None
        fields: dict = {}
        for key, value in form.multi_items():
            if not isinstance(value, str):
                if key != "video":
                    raise ApiError(400, f"file uploads are not supported (field '{key[:40]}')", key[:40])
                value = await value.read()  # bytes: an uploaded copy of a video made here
            outer, _, inner = key.partition("[")
            if inner.endswith("]"):
                fields.setdefault(outer, {})
                if isinstance(fields[outer], dict):
                    fields[outer][inner[:-1]] = value
            else:
                fields[key] = value
        return fields
    try:
        fields = json.loads(bytes(body) or b"{}")
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"malformed JSON body: {err}") from None
    if not isinstance(fields, dict):
        raise ApiError(400, "the JSON body must be an object")
    return fields


class RequestChecker:
    """Turns body fields into a VideoRequest within the service's bounds."""

    def __init__(self, limits: ServeConfig, model: str, size: str):
        self.limits, self.model, self.size = limits, model, size

    def create(self, fields: dict) -> VideoRequest:
        self.only(fields, {"prompt", "seconds", "size", "model", "seed", "live"})
        live = self.flag(fields, "live")
        if live and "seconds" in fields:
            raise ApiError(400, "a live video has no seconds: it runs until stopped, at most serve.max_live_seconds="
                                f"{self.limits.max_live_seconds:g}", "seconds")
        seconds = self.limits.max_live_seconds if live else self.seconds(fields, default=8.0)
        return VideoRequest(self.prompt(fields), seconds, self.size_of(fields), self.model_of(fields),
                            self.seed(fields), live=live)

    def prompt_change(self, fields: dict) -> tuple[str, float]:
        """The new prompt of a video in progress and the seconds over which it takes over (0: at once), within
        serve.max_seconds."""
        self.only(fields, {"prompt", "transition_seconds"})
        value = fields.get("transition_seconds", 0)
        try:
            transition = float(value)
        except (TypeError, ValueError):
            raise ApiError(400, f"transition_seconds must be a number, got {str(value)[:40]!r}",
                           "transition_seconds") from None
        if not 0 <= transition <= self.limits.max_seconds:
            raise ApiError(400, f"transition_seconds must be in 0..{self.limits.max_seconds:g} (serve.max_seconds), "
                                f"got {str(value)[:40]}", "transition_seconds")
        return self.prompt(fields), transition

    @staticmethod
    def flag(fields: dict, name: str) -> bool:
        """A boolean field: true or false, in JSON or as a form's text."""
        value = fields.get(name, False)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            value = value.strip().lower() == "true"
        if not isinstance(value, bool):
            raise ApiError(400, f"{name} must be true or false, got {str(value)[:40]!r}", name)
        return value

    def extension(self, fields: dict) -> VideoRequest:
        self.only(fields, {"prompt", "seconds", "video", "seed"})
        video = fields.get("video")
        video_id = video.get("id") if isinstance(video, dict) else None
        if not isinstance(video_id, str):
            raise ApiError(400, "video must be an object with the id of a completed video", "video")
        return VideoRequest(self.prompt(fields), self.seconds(fields, default=None), self.size, self.model,
                            self.seed(fields), check_id(video_id))

    @staticmethod
    def only(fields: dict, allowed: set[str]) -> None:
        unknown = set(fields) - allowed
        if unknown:
            raise ApiError(400, f"unsupported field(s): {', '.join(sorted(k[:40] for k in unknown))}")

    def prompt(self, fields: dict) -> str:
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ApiError(400, "prompt is required and must be a non-empty string", "prompt")
        if len(prompt) > self.limits.max_prompt_chars:
            raise ApiError(400, f"prompt longer than {self.limits.max_prompt_chars} characters", "prompt")
        return prompt.strip()

    def seconds(self, fields: dict, default: float | None) -> float:
        value = fields.get("seconds", default)
        if value is None:
            raise ApiError(400, "seconds is required", "seconds")
        try:
            return check_seconds(float(value), self.limits.max_seconds, "serve.max_seconds")
        except (TypeError, ValueError):
            raise ApiError(400, f"seconds must be a number, got {str(value)[:40]!r}", "seconds") from None
        except UserError as err:
            raise ApiError(400, str(err), "seconds") from None

    def size_of(self, fields: dict) -> str:
        size = str(fields.get("size") or self.size)
        if size != self.size:
            raise ApiError(400, f"size {size[:40]!r} is not available; model {self.model} makes {self.size}", "size")
        return size

    def model_of(self, fields: dict) -> str:
        model = str(fields.get("model") or self.model)
        if model != self.model:
            raise ApiError(400, f"model {model[:40]!r} is not served here; use {self.model!r}", "model")
        return model

    def seed(self, fields: dict) -> int:
        value = fields.get("seed")
        if value is None:
            return secrets.randbelow(2**31)
        try:
            return seed_value(value)
        except UserError as err:
            raise ApiError(400, str(err), "seed") from None
