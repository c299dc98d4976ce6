"""The video service: durable video jobs in the runs store, run by one pipeline in a background thread."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.core.config import Config, written_frame_size
from orchestrator.core.errors import UserError, one_line
from orchestrator.engine.jobs import JobQueue, StreamJob, conclude
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.steering import PromptChange
from orchestrator.entry.serving.live import ChangeRate, shown_schedule
from orchestrator.entry.serving.requests import VIDEO_ID, ApiError, VideoRequest, new_video_id
from orchestrator.entry.serving.tenants import OPEN, Tenant, Tenants
from orchestrator.state import segments
from orchestrator.state.atomic import partial_path, write_text_atomic
from orchestrator.state.runs import RunFolder

if TYPE_CHECKING:
    from orchestrator.engine.executor import Executor

log = logging.getLogger(__name__)
RECORD = "video.json"


@dataclass
class VideoRecord:
    """What the API knows of a video besides its run's status; saved as video.json in its run folder."""

    id: str
    created_at: int
    prompt: str
    seconds: float  # requested new seconds (a live video: its bound, until it ends)
    total_seconds: float  # with the video it extends
    size: str
    model: str
    seed: int
    extends: str = ""
    completed_at: int | None = None  # set once content.mp4 exists
    error: str = ""
    content_sha256: str = ""  # of content.mp4, to recognise an uploaded copy
    tenant: str = OPEN  # who made it: only they see it
    live: bool = False  # runs until stopped
    stopped: bool = False  # a stop was asked
    prompts: list[str] = field(default_factory=list)  # the prompt schedule it was made with, once completed


def load_record(path: Path) -> VideoRecord | None:
    try:
        return VideoRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


class VideoService:
    """Accepts requests, keeps each video's record and run folder under the runs root, and feeds a JobQueue
    that one pipeline works through (continuous batching of up to pipeline.max_streams videos)."""

    def __init__(self, config: Config, model: str, tenants: Tenants):
        self.config, self.model, self.tenants = config, model, tenants
        self.root = Path(config.run.root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        width, height = written_frame_size(config)
        self.size = f"{width}x{height}"
        self.queue = JobQueue()
        self.live: dict[str, StreamJob] = {}  # queued or running
        self.lock = threading.Lock()
        self.metrics = PipelineMetrics("serve", max(config.pipeline.stages, 1))
        self.change_rate = ChangeRate(config.serve.max_prompt_changes_per_minute)
        self.executor: Executor | None = None  # the stages and sink, in process or on Ray
        self.broken = ""  # why the pipeline cannot start, if it cannot
        self.stopping = False  # a clean stop is under way: no new videos
        self.recover()
        self.worker = threading.Thread(target=self.work, name="pavdm-pipeline", daemon=True)
        self.worker.start()

    # --- the pipeline thread ---------------------------------------------------------------------------------

    def work(self) -> None:
        from orchestrator.engine.runner import run_jobs  # torch and the model code load with the pipeline

        while not (self.queue.finished or self.queue.suspended):
            try:
                run_jobs(self.config, self.queue, self.metrics, on_executor=self.use_executor)
            except UserError as err:  # the pipeline cannot be built as configured: nothing waiting can run
                log.error("the pipeline cannot start: %s", err)
                self.broken = one_line(err)
                for job in self.queue.take(len(self.queue), wait=0):
                    conclude(job, error=err)
                time.sleep(self.config.recovery.backoff_seconds)
            except Exception:
                log.exception("the pipeline stopped; starting it again")
                time.sleep(self.config.recovery.backoff_seconds)

    def use_executor(self, executor: Executor | None) -> None:
        self.executor = executor
        if executor is not None:
            self.broken = ""

    def stop(self) -> None:
        """No new videos; what is on the stages or waiting keeps its checkpoints and continues after a restart."""
        self.queue.close()

    def drain(self, grace: float) -> list[str]:
        """A clean stop: no new videos, every video on the stages checkpointed at its next shift boundary and
        taken off, the pipeline stopped; within `grace` seconds. One line per video left to continue."""
        self.stopping = True
        self.queue.suspend()
        self.worker.join(timeout=grace)
        lines = []
        for job in list(self.live.values()):
            status = job.run.status()
            kept = status.frames_written if status is not None else 0
            lines.append(f"saved {job.id} at frame {kept} of {job.frames_total or '?'}; it continues on the next start")
        return lines

    # --- records -----------------------------------------------------------------------------------------------

    def folder(self, video_id: str) -> Path:
        return self.root / video_id  # video_id matched VIDEO_ID: a plain name inside the root

    def record(self, video_id: str, tenant: Tenant | None = None) -> VideoRecord:
        """A video's record; another tenant's video answers 404 exactly as an unknown one."""
        record = load_record(self.folder(video_id) / RECORD)
        if record is None or (tenant is not None and record.tenant != tenant.name):
            raise ApiError(404, "no video with that id", "video_id", "not_found")
        return record

    def save(self, record: VideoRecord) -> None:
        write_text_atomic(self.folder(record.id) / RECORD, json.dumps(dataclasses.asdict(record)))

    def content(self, video_id: str) -> Path:
        return self.folder(video_id) / "content.mp4"

    def status_of(self, record: VideoRecord) -> tuple[str, int, str]:
        """(API status, progress percent, error) from the record, the live job and the run's status file."""
        if record.completed_at is not None:
            return "completed", 100, ""
        if record.error:
            return "failed", 0, record.error
        job = self.live.get(record.id)
        status = RunFolder(self.folder(record.id)).status()
        if status is None or (job is not None and not job.admitted):
            return "queued", 0, ""
        if status.state == "failed":
            return "failed", 0, status.error or "generation failed"
        written = job.written if job is not None else status.frames_written
        progress = int(99 * written / status.frames_total) if status.frames_total else 0
        return "in_progress", progress, ""

    def describe(self, record: VideoRecord) -> dict:
        """The OpenAI video object (plus seed, extended_from_video_id, live and prompt_schedule). A live video's
        seconds are those made so far until it completes."""
        state, progress, error = self.status_of(record)
        job = self.live.get(record.id)
        seconds = record.total_seconds
        if record.live and record.completed_at is None:
            seconds = (job.written if job is not None else 0) / self.config.fps
        prompts = job.config.prompts if job is not None else record.prompts or [f"0:{record.prompt}"]
        return {
            "id": record.id, "object": "video", "model": record.model, "status": state, "progress": progress,
            "created_at": record.created_at, "completed_at": record.completed_at, "expires_at": None,
            "seconds": f"{seconds:g}", "size": record.size, "prompt": record.prompt,
            "remixed_from_video_id": None, "seed": record.seed, "extended_from_video_id": record.extends or None,
            "error": {"code": "generation_failed", "message": error} if state == "failed" else None,
            "live": record.live, "prompt_schedule": shown_schedule(prompts),
        }

    def records(self, tenant: Tenant | None = None) -> list[VideoRecord]:
        """Every video's record, or one tenant's, oldest first."""
        found = [load_record(path) for path in self.root.glob(f"*/{RECORD}") if VIDEO_ID.match(path.parent.name)]
        return sorted((r for r in found if r is not None and (tenant is None or r.tenant == tenant.name)),
                      key=lambda r: (r.created_at, r.id))

    # --- requests ----------------------------------------------------------------------------------------------

    def submit(self, request: VideoRequest, tenant: Tenant) -> VideoRecord:
        """Create the video's record and run, and queue it (HTTP 429 beyond the tenant's share of the queue or
        its quotas)."""
        if self.stopping:
            raise ApiError(503, "the server is stopping; retry on the next start", code="stopping")
        self.check_quotas(request, self.tenants.named(tenant.name))
        total = request.seconds
        init_latents = ""
        if request.extends:
            parent = self.record(request.extends, tenant)
            if parent.completed_at is None:
                raise ApiError(400, "only a completed video can be extended", "video")
            if parent.size != self.size:
                raise ApiError(400, f"video {parent.id} is {parent.size}; this service makes {self.size} and cannot "
                                    "continue it in one file", "video")
            total += parent.total_seconds
            if total > self.config.serve.max_total_seconds:
                raise ApiError(400, f"the extended video would last {total:g} s, more than "
                                    f"serve.max_total_seconds={self.config.serve.max_total_seconds:g}", "seconds")
            init_latents = str(self.folder(parent.id) / "latents_all.arrow")
        video_id = new_video_id()
        config = copy.deepcopy(self.config)
        config.prompts = [f"0:{request.prompt}"]  # the whole prompt, even one that starts like "16:9 ..."
        config.seconds, config.seed = request.seconds, request.seed
        config.init_latents = init_latents
        config.run.root, config.run.id = str(self.root), video_id
        config.output.out = str(self.folder(video_id) / "new.mp4")
        config.output.latents_out = str(self.folder(video_id) / "latents.arrow")
        run = RunFolder.create(config)
        record = VideoRecord(video_id, int(time.time()), request.prompt, request.seconds, total, request.size,
                             request.model, request.seed, request.extends, tenant=tenant.name, live=request.live)
        self.save(record)
        self.enqueue(StreamJob(config, run, owner=tenant.name), record)
        return record

    def check_quotas(self, request: VideoRequest, tenant: Tenant) -> None:
        """429 with Retry-After when the tenant has its share of the queue waiting, max_videos queued or running,
        or would pass max_video_seconds_per_hour."""
        if self.queue.waiting_of(tenant.name) >= self.config.serve.max_queued:
            raise ApiError(429, f"the queue is full: you have {self.config.serve.max_queued} videos waiting "
                                "(serve.max_queued); retry later", code="queue_full", retry_after=10)
        if tenant.max_videos is not None:
            with self.lock:
                running = sum(job.owner == tenant.name for job in self.live.values())
            if running >= tenant.max_videos:
                raise ApiError(429, f"you have {running} videos queued or running, your quota is "
                                    f"{tenant.max_videos}", code="quota_exceeded", retry_after=10)
        if tenant.max_video_seconds_per_hour is not None:
            now = time.time()
            recent = [(r.created_at, r.seconds) for r in self.records(tenant) if r.created_at > now - 3600]
            used = sum(seconds for _, seconds in recent)
            if used + request.seconds > tenant.max_video_seconds_per_hour:
                frees = [created + 3600 - now for created, _ in sorted(recent)] or [0.0]
                raise ApiError(429, f"{used:g} of your {tenant.max_video_seconds_per_hour:g} video-seconds per hour "
                                    "are used", code="quota_exceeded", retry_after=max(1, int(frees[0]) + 1))

    def enqueue(self, job: StreamJob, record: VideoRecord) -> None:
        job.on_end = self.ended
        if record.live:
            job.on_frames = lambda frames: self.metrics.live_seconds.labels(job.id).set(frames / job.config.fps)
        if record.stopped:  # asked before a restart
            job.steering.stop()
        with self.lock:
            self.live[job.id] = job
        self.queue.put(job)

    # --- steering ----------------------------------------------------------------------------------------------

    def in_progress(self, video_id: str, tenant: Tenant) -> tuple[VideoRecord, StreamJob]:
        """A video being made and its job; 409 for one that is waiting, completed or failed."""
        record = self.record(video_id, tenant)
        state = self.status_of(record)[0]
        job = self.live.get(video_id)
        if state != "in_progress" or job is None:
            reason = "has not started yet; retry once it is in_progress" if state == "queued" else f"is {state}"
            raise ApiError(409, f"the video {reason}", "video_id", "video_not_in_progress")
        return record, job

    def change_prompt(self, video_id: str, prompt: str, transition: float, tenant: Tenant) -> PromptChange:
        """Ask for a new prompt from the next chunk to enter, reached over `transition` seconds (within
        serve.max_prompt_changes_per_minute)."""
        record, job = self.in_progress(video_id, tenant)
        if record.stopped:
            raise ApiError(409, "the video is stopping", "video_id", "video_stopping")
        self.change_rate.admit(video_id)
        return job.steering.change_prompt(prompt, transition)

    def stop_video(self, video_id: str, tenant: Tenant) -> StreamJob:
        """Ask for the end after the chunks in the window drain (recorded, so that a restart keeps it). Under the
        lock, so that the record saved here is never one that ended() has since completed."""
        with self.lock:
            record, job = self.in_progress(video_id, tenant)
            if record.stopped or not job.steering.stop():
                raise ApiError(409, "the video is already stopping", "video_id", "video_stopping")
            record.stopped = True
            self.save(record)
        return job

    def ended(self, job: StreamJob) -> None:
        """A job left the pipeline: finish its content, or record why not, or remove a deleted video. Runs
        under the lock, so that a DELETE sees the video either live or finished."""
        with self.lock:
            self.live.pop(job.id, None)
            self.change_rate.forget(job.id)
            if job.cancelled.is_set():
                shutil.rmtree(self.folder(job.id), ignore_errors=True)
                return
            record = self.record(job.id)
            if job.out is None:
                record.error = one_line(job.error) or "generation failed"
                self.save(record)
                return
            self.finalize(record, job.config)

    def finalize(self, record: VideoRecord, config: Config) -> None:
        """content.mp4 (and latents_all.arrow, the context of extensions): this video's frames, after those of
        the video it extends; the record takes the length and prompt schedule the video was made with."""
        folder = self.folder(record.id)
        record.total_seconds += config.seconds - record.seconds
        record.seconds, record.prompts = config.seconds, list(config.prompts)
        parts_mp4, parts_latents = [folder / "new.mp4"], [folder / "latents.arrow"]
        if record.extends:
            parent = self.folder(record.extends)
            parts_mp4.insert(0, parent / "content.mp4")
            parts_latents.insert(0, parent / "latents_all.arrow")
        try:
            joins = {"content.mp4": lambda temp: segments.join_mp4(parts_mp4, temp, config.output.crf),
                     "latents_all.arrow": lambda temp: segments.join_arrow(parts_latents, temp)}
            for name, join in joins.items():
                temp = partial_path(folder / name)
                join(temp)
                os.replace(temp, folder / name)
        except OSError as err:
            record.error = f"could not assemble the video: {err}"
            self.save(record)
            return
        record.completed_at = int(time.time())
        record.content_sha256 = hashlib.sha256(self.content(record.id).read_bytes()).hexdigest()
        self.save(record)
        for part in (folder / "new.mp4", folder / "latents.arrow"):  # now inside content / latents_all
            part.unlink(missing_ok=True)

    def find_by_content(self, data: bytes, tenant: Tenant) -> str:
        """The id of the tenant's completed video whose content.mp4 is exactly `data`."""
        digest = hashlib.sha256(data).hexdigest()
        for record in self.records(tenant):
            if record.content_sha256 == digest:
                return record.id
        raise ApiError(400, "the uploaded video is not one made by this service; pass video[id] instead", "video")

    def delete(self, video_id: str, tenant: Tenant) -> None:
        self.record(video_id, tenant)
        with self.lock:
            job = self.live.get(video_id)
            if job is None or self.queue.remove(job):  # finished, or still waiting: gone now
                self.live.pop(video_id, None)
                shutil.rmtree(self.folder(video_id), ignore_errors=True)
            else:
                job.cancelled.set()  # on the stages: the engine drops it and ended() removes the folder

    def recover(self) -> None:
        """After a restart: finish what had completed, queue what had not (it continues from its checkpoint)."""
        for record in self.records():
            if record.completed_at is not None or record.error:
                continue
            run = RunFolder(self.folder(record.id))
            status = run.status()
            if status is not None and status.state == "completed":
                self.finalize(record, run.load_config())
            elif status is not None and status.state == "failed":
                record.error = status.error or "generation failed"
                self.save(record)
            else:
                self.enqueue(StreamJob(run.load_config(), run, owner=record.tenant), record)

    async def frames_since(self, video_id: str, index: int):
        """Frames of a video being made, from the sink: ([(index, [H, W, 3])], done | None if unknown)."""
        executor = self.executor
        if executor is None:
            return [], None
        try:
            return await executor.frames_since(video_id, index, 1.0)
        except Exception:  # the pipeline is being rebuilt
            return [], None
