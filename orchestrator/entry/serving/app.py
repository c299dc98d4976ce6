"""The Ray Serve application: HTTP routes of the video API over one VideoService (`app` is its import path)."""

import hmac
import logging
import os
import shlex
import signal
import socket
import threading

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ray import serve
from starlette.middleware.base import BaseHTTPMiddleware

from orchestrator.core.config import Config
from orchestrator.core.errors import UserError
from orchestrator.entry.serving.requests import ApiError, RequestChecker, check_id, read_fields
from orchestrator.entry.serving.service import VideoService
from orchestrator.entry.serving.stream import live_video
from orchestrator.state.settings import load_config

log = logging.getLogger(__name__)
api = FastAPI(title="pavdm", description="Long videos with progressive autoregressive video diffusion.")
PUBLIC = ("/healthz", "/metrics")


def settings_from_env() -> dict:
    """The service's settings from PAVDM_RUNS, PAVDM_MODEL and PAVDM_OVERRIDES (the token is read by the
    replica itself, so that it never appears in the Serve config)."""
    return {"root": os.environ.get("PAVDM_RUNS", "runs"), "model": os.environ.get("PAVDM_MODEL", "tiny"),
            "overrides": shlex.split(os.environ.get("PAVDM_OVERRIDES", ""))}


def service_config(root: str, model: str, overrides: list[str]) -> Config:
    config = load_config([], overrides, model=model)
    config.run.root = root
    return config


class BearerAuth(BaseHTTPMiddleware):
    """401 unless `Authorization: Bearer <PAVDM_API_KEY>` (when the variable is set); health and metrics
    stay open."""

    async def dispatch(self, request: Request, call_next):
        key = os.environ.get("PAVDM_API_KEY", "")
        if key and request.url.path not in PUBLIC:
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                return error_response(ApiError(401, "missing or wrong API key (Authorization: Bearer ...)",
                                               code="invalid_api_key"))
        return await call_next(request)


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


api.add_middleware(BearerAuth)


@api.exception_handler(ApiError)
async def api_error(request: Request, err: ApiError) -> JSONResponse:
    return error_response(err)


@api.exception_handler(RequestValidationError)
async def invalid_parameter(request: Request, err: RequestValidationError) -> JSONResponse:
    """A query or path parameter of the wrong type: the OpenAI-style 400 body, naming the parameter."""
    first = err.errors()[0] if err.errors() else {}
    param = str(first.get("loc", ("", "request"))[-1])
    return error_response(ApiError(400, f"{param}: {first.get('msg', 'invalid value')}", param))


@api.exception_handler(Exception)
async def unexpected_error(request: Request, err: Exception) -> JSONResponse:
    log.exception("error answering %s %s", request.method, request.url.path)
    return error_response(ApiError(500, "internal error", code="server_error"))


@serve.deployment(num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class VideoAPI:
    """One replica: it owns the pipeline (its stages and sink are its child actors)."""

    def __init__(self, settings: dict):
        self.service = VideoService(service_config(settings["root"], settings["model"], settings["overrides"]),
                                    settings["model"])
        self.checker = RequestChecker(self.service.config.serve, settings["model"], self.service.size)
        self.limit = self.service.config.serve.max_body_bytes

    def __del__(self):
        self.service.stop()

    @api.get("/healthz")
    def health(self):
        state = {"queued": len(self.service.queue), "live": len(self.service.live)}
        if self.service.broken:
            return JSONResponse({"status": "broken", "error": self.service.broken, **state}, status_code=503)
        return {"status": "ok", **state}

    @api.get("/metrics")
    def metrics(self) -> Response:
        return Response(generate_latest(self.service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @api.post("/v1/videos")
    async def create(self, request: Request) -> dict:
        video = self.service.submit(self.checker.create(await read_fields(request, self.limit)))
        return self.service.describe(video)

    @api.post("/v1/videos/extensions")
    async def extend(self, request: Request) -> dict:
        fields = await read_fields(request, self.limit)
        if isinstance(fields.get("video"), bytes):  # the official client uploads the video itself
            fields["video"] = {"id": self.service.find_by_content(fields["video"])}
        video = self.service.submit(self.checker.extension(fields))
        return self.service.describe(video)

    @api.get("/v1/videos")
    def list_videos(self, after: str = "", limit: int = 20, order: str = "desc") -> dict:
        if order not in ("asc", "desc"):
            raise ApiError(400, "order must be 'asc' or 'desc'", "order")
        if not 1 <= limit <= 100:
            raise ApiError(400, "limit must be in 1..100", "limit")
        records = self.service.records()
        if order == "desc":
            records.reverse()
        ids = [r.id for r in records]
        start = ids.index(after) + 1 if after in ids else 0
        if after and after not in ids:
            raise ApiError(400, "after must be the id of a listed video", "after")
        page = records[start : start + limit]
        return {"object": "list", "data": [self.service.describe(r) for r in page],
                "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
                "has_more": start + limit < len(records)}

    @api.get("/v1/videos/{video_id}")
    def retrieve(self, video_id: str) -> dict:
        return self.service.describe(self.service.record(check_id(video_id)))

    @api.delete("/v1/videos/{video_id}")
    def delete(self, video_id: str) -> dict:
        self.service.delete(check_id(video_id))
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @api.get("/v1/videos/{video_id}/content")
    def content(self, video_id: str, variant: str = "video") -> FileResponse:
        record = self.service.record(check_id(video_id))
        if variant != "video":
            raise ApiError(400, "only variant=video is available", "variant")
        if record.completed_at is None:
            raise ApiError(409, "the video is not completed yet; see /stream for the frames made so far",
                           code="not_ready")
        return FileResponse(self.service.content(video_id), media_type="video/mp4", filename=f"{video_id}.mp4")

    @api.get("/v1/videos/{video_id}/stream")
    def stream(self, video_id: str) -> Response:
        record = self.service.record(check_id(video_id))
        state = self.service.status_of(record)[0]
        if state == "completed":
            return FileResponse(self.service.content(video_id), media_type="video/mp4")
        if state == "failed":
            raise ApiError(409, "the video failed; there is nothing to stream", code="failed")
        return StreamingResponse(live_video(self.service, video_id), media_type="video/mp4")


def check_port_free(host: str, port: int, what: str) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserError(f"cannot listen on {host}:{port} for {what}: {err.strerror}") from None


def serve_locally(host: str, port: int, settings: dict) -> None:
    """`pavdm serve`: the application on Ray Serve (joining RAY_ADDRESS if set) until SIGINT or SIGTERM."""
    from orchestrator.engine.ray_pipeline import ray_session

    config = service_config(settings["root"], settings["model"], settings["overrides"])  # errors before Ray
    check_port_free(host, port, "the API")
    if config.metrics.port:
        check_port_free(config.metrics.host, config.metrics.port, "metrics (metrics.port=0 disables)")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with ray_session(config.pipeline):
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(VideoAPI.bind(settings), name="pavdm", route_prefix="/", blocking=False)
            print(f"pavdm: serving on http://{host}:{port}/v1/videos (runs in {config.run.root}); Ctrl-C stops",
                  flush=True)
            stop.wait()
        finally:
            serve.shutdown()


app = VideoAPI.bind(settings_from_env())
