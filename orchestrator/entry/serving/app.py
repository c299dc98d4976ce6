"""The Ray Serve application: HTTP routes of the video API over one VideoService (`app` is its import path)."""

import asyncio
import json
import logging
import os
import re
import shlex
import signal
import socket
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from ray import serve
from starlette.middleware.base import BaseHTTPMiddleware

from orchestrator.core.config import Config
from orchestrator.core.errors import UserError
from orchestrator.entry.serving.requests import ApiError, RequestChecker, check_id, read_fields
from orchestrator.entry.serving.service import VideoService
from orchestrator.entry.serving.stream import live_video
from orchestrator.entry.serving.tenants import Tenants, check_exposure
from orchestrator.state.settings import load_config

log = logging.getLogger(__name__)
api = FastAPI(title="pavdm", description="Long videos with progressive autoregressive video diffusion.")
PUBLIC = ("/healthz", "/metrics")
AUDIT_LOG = "audit.log"
VIDEO_IN_PATH = re.compile(r"video_[0-9a-f]{32}")
RECORDED_WITHIN = 30.0  # seconds a steering request waits for the pipeline to record it (it does so between ticks)


async def recorded(done: threading.Event, within: float = RECORDED_WITHIN, poll: float = 0.05) -> None:
    """Wait until the pipeline has recorded a steering request, or `within` seconds, holding no thread meanwhile."""
    deadline = time.monotonic() + within
    while not done.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(poll)


def settings_from_env() -> dict:
    """The service's settings from PAVDM_RUNS, PAVDM_MODEL and PAVDM_OVERRIDES (the token is read by the
    replica itself, so that it never appears in the Serve config)."""
    return {"root": os.environ.get("PAVDM_RUNS", "runs"), "model": os.environ.get("PAVDM_MODEL", "tiny"),
            "overrides": shlex.split(os.environ.get("PAVDM_OVERRIDES", ""))}


def service_config(root: str, model: str, overrides: list[str]) -> Config:
    config = load_config([], overrides, model=model)
    config.run.root = root
    if config.serve.max_live_seconds > config.run.max_seconds:
        raise UserError(f"serve.max_live_seconds must be at most run.max_seconds ({config.run.max_seconds:g}), "
                        f"got {config.serve.max_live_seconds:g}")
    return config


class TenantAuth(BaseHTTPMiddleware):
    """Who calls (401 without a known key, when keys are configured; health and metrics stay open), 503 for new
    work during a clean stop, and one audit line and one counted request per call, keys never among them."""

    async def dispatch(self, request: Request, call_next):
        office = request.app.state.office
        tenant = office.tenants.identify(request.headers.get("authorization", ""))
        request.state.tenant, request.state.video_id = tenant, ""
        if tenant is None and request.url.path not in PUBLIC:
            response = error_response(ApiError(401, "missing or wrong API key (Authorization: Bearer ...)",
                                               code="invalid_api_key"))
        else:
            response = await call_next(request)
        office.record(request, response.status_code)
        return response


class FrontOffice:
    """The tenants of the server, its audit log (one JSON line per request in the runs store) and the request
    counter of its metrics."""

    def __init__(self, tenants: Tenants, root: Path, registry):
        self.tenants, self.audit = tenants, root / AUDIT_LOG
        self.lock = threading.Lock()
        self.requests = Counter("pavdm_api_requests", "HTTP requests answered, by tenant, route and status",
                                ["tenant", "route", "status"], registry=registry)

    def record(self, request: Request, status: int) -> None:
        tenant = request.state.tenant.name if request.state.tenant is not None else ""
        route = getattr(request.scope.get("route"), "path", "unknown")
        match = VIDEO_IN_PATH.search(request.url.path)
        line = {"time": round(time.time(), 3), "tenant": tenant, "method": request.method, "route": route,
                "status": status, "video_id": request.state.video_id or (match.group(0) if match else "")}
        with self.lock, self.audit.open("a") as log_file:
            log_file.write(json.dumps(line) + "\n")
        self.requests.labels(tenant, route, str(status)).inc()


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


api.add_middleware(TenantAuth)


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
        config = service_config(settings["root"], settings["model"], settings["overrides"])
        tenants = Tenants(config.serve.keys_file)
        self.service = VideoService(config, settings["model"], tenants)
        api.state.office = FrontOffice(tenants, self.service.root, self.service.metrics.registry)
        self.checker = RequestChecker(self.service.config.serve, settings["model"], self.service.size)
        self.limit = self.service.config.serve.max_body_bytes

    def __del__(self):  # Ray Serve stopping the replica (a RayService rollout): the same clean stop
        self.service.drain(self.service.config.serve.grace_seconds)

    def drain(self, grace: float) -> list[str]:
        """The clean stop, called by `pavdm serve` on SIGTERM or SIGINT (see VideoService.drain)."""
        return self.service.drain(grace)

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
        video = self.service.submit(self.checker.create(await read_fields(request, self.limit)), request.state.tenant)
        request.state.video_id = video.id
        return self.service.describe(video)

    @api.post("/v1/videos/extensions")
    async def extend(self, request: Request) -> dict:
        fields = await read_fields(request, self.limit)
        tenant = request.state.tenant
        if isinstance(fields.get("video"), bytes):  # the official client uploads the video itself
            fields["video"] = {"id": self.service.find_by_content(fields["video"], tenant)}
        video = self.service.submit(self.checker.extension(fields), tenant)
        request.state.video_id = video.id
        return self.service.describe(video)

    @api.get("/v1/videos")
    def list_videos(self, request: Request, after: str = "", limit: int = 20, order: str = "desc") -> dict:
        if order not in ("asc", "desc"):
            raise ApiError(400, "order must be 'asc' or 'desc'", "order")
        if not 1 <= limit <= 100:
            raise ApiError(400, "limit must be in 1..100", "limit")
        records = self.service.records(request.state.tenant)
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
    def retrieve(self, request: Request, video_id: str) -> dict:
        return self.service.describe(self.service.record(check_id(video_id), request.state.tenant))

    @api.delete("/v1/videos/{video_id}")
    def delete(self, request: Request, video_id: str) -> dict:
        self.service.delete(check_id(video_id), request.state.tenant)
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @api.post("/v1/videos/{video_id}/prompt")
    async def change_prompt(self, request: Request, video_id: str) -> dict:
        """A new prompt from the next chunk to enter the window; answers once it is in the video's schedule."""
        prompt, transition = self.checker.prompt_change(await read_fields(request, self.limit))
        change = self.service.change_prompt(check_id(video_id), prompt, transition, request.state.tenant)
        await recorded(change.done)
        if change.refused:
            raise ApiError(409, f"the prompt cannot change: {change.refused}", "video_id", "video_not_in_progress")
        return self.service.describe(self.service.record(video_id))

    @api.post("/v1/videos/{video_id}/stop")
    async def stop_video(self, request: Request, video_id: str) -> dict:
        """End the video after the chunks in the window drain; answers once the end is recorded."""
        job = self.service.stop_video(check_id(video_id), request.state.tenant)
        await recorded(job.steering.stopped)
        return self.service.describe(self.service.record(video_id))

    @api.get("/v1/videos/{video_id}/content")
    def content(self, request: Request, video_id: str, variant: str = "video") -> FileResponse:
        record = self.service.record(check_id(video_id), request.state.tenant)
        if variant != "video":
            raise ApiError(400, "only variant=video is available", "variant")
        if record.completed_at is None:
            raise ApiError(409, "the video is not completed yet; see /stream for the frames made so far",
                           code="not_ready")
        return FileResponse(self.service.content(video_id), media_type="video/mp4", filename=f"{video_id}.mp4")

    @api.get("/v1/videos/{video_id}/stream")
    def stream(self, request: Request, video_id: str) -> Response:
        record = self.service.record(check_id(video_id), request.state.tenant)
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


def serve_locally(host: str, port: int, settings: dict, allow_unauthenticated: bool = False) -> None:
    """`pavdm serve`: the application on Ray Serve (joining RAY_ADDRESS if set) until SIGINT or SIGTERM, which
    stop it cleanly: every video in progress is checkpointed and continues on the next start."""
    from orchestrator.engine.ray_pipeline import ray_session

    config = service_config(settings["root"], settings["model"], settings["overrides"])  # errors before Ray
    warning = check_exposure(host, Tenants(config.serve.keys_file), allow_unauthenticated)
    if warning:
        log.warning(warning)
    check_port_free(host, port, "the API")
    if config.metrics.port:
        check_port_free(config.metrics.host, config.metrics.port, "metrics (metrics.port=0 disables)")
    stop = threading.Event()
    with ray_session(config.pipeline):
        for signum in (signal.SIGINT, signal.SIGTERM):  # after Ray's start, which installs handlers of its own
            signal.signal(signum, lambda *_: stop.set())
        serve.start(http_options={"host": host, "port": port})
        try:
            handle = serve.run(VideoAPI.bind(settings), name="pavdm", route_prefix="/", blocking=False)
            print(f"pavdm: serving on http://{host}:{port}/v1/videos (runs in {config.run.root}); Ctrl-C stops",
                  flush=True)
            stop.wait()
            grace = config.serve.grace_seconds
            print(f"pavdm: stopping: checkpointing the videos in progress (at most {grace:g} s)", flush=True)
            for line in handle.drain.remote(grace * 0.8).result(timeout_s=grace * 0.9):
                print(f"pavdm: {line}", flush=True)
        finally:
            serve.shutdown()


app = VideoAPI.bind(settings_from_env())
