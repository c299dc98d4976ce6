"""Prometheus metrics of a pipeline run, every series labelled with its run_id."""

from __future__ import annotations

import contextlib
import errno
import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from orchestrator.core.errors import UserError

log = logging.getLogger(__name__)

TICK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DEFAULT_PORT = 9464
AUTO_PORTS = (*range(DEFAULT_PORT, DEFAULT_PORT + 100), 0)  # tried in turn when metrics.port is unset; 0: any free


def listen(host: str, port: int, registry: CollectorRegistry) -> WSGIServer | None:
    """A /metrics server on host:port, or None if the port is taken; any other failure is a UserError."""
    try:
        return start_http_server(port, addr=host, registry=registry)[0]
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            return None
        raise UserError(f"cannot serve metrics on {host}:{port}: {err.strerror} (metrics.port=0 serves none)") from None


class PipelineMetrics:
    """The pipeline's counters, gauges and histograms in their own registry."""

    def __init__(self, run_id: str, stages: int):
        self.registry = CollectorRegistry()
        self.run_id = run_id
        run, reg = ["run_id"], self.registry
        self.frames = Counter("pavdm_frames_emitted", "Video frames written", run, registry=reg)
        self.chunks = Counter("pavdm_chunks_emitted", "Clean chunks handed to the sink", run, registry=reg)
        self.ticks = Counter("pavdm_ticks", "Ticks (substeps) completed", run, registry=reg)
        self.tick_seconds = Histogram("pavdm_tick_duration_seconds", "Wall time of one tick across all stages",
                                      run, buckets=TICK_BUCKETS, registry=reg)
        self.call_seconds = Histogram("pavdm_stage_call_duration_seconds", "Model call time per stage",
                                      [*run, "stage"], buckets=TICK_BUCKETS, registry=reg)
        self.handoff_bytes = Counter("pavdm_handoff_bytes", "Chunk bytes passed between stages (handoff, halo)",
                                     [*run, "stage"], registry=reg)
        self.handoff_seconds = Histogram("pavdm_handoff_wait_seconds",
                                         "Time a stage's tick waited after its inputs were published",
                                         [*run, "stage"], buckets=TICK_BUCKETS, registry=reg)
        self.collective_seconds = Histogram("pavdm_collective_seconds",
                                            "Time a stage spent in one tick's collectives (joint calls)",
                                            [*run, "stage"], buckets=TICK_BUCKETS, registry=reg)
        self.collective_bytes = Counter("pavdm_collective_bytes",
                                        "Bytes a stage received from the other stages in collectives (joint calls)",
                                        [*run, "stage"], registry=reg)
        self.fps = Gauge("pavdm_frames_per_second", "Frames written per second since the run started", run,
                         registry=reg)
        self.eta = Gauge("pavdm_eta_seconds", "Estimated seconds until the video is complete", run, registry=reg)
        self.first_frame = Gauge("pavdm_first_frame_seconds", "Seconds from a video's start to its first frame",
                                 run, registry=reg)
        self.streams = Gauge("pavdm_active_streams", "Videos currently in the pipeline", run, registry=reg)
        self.batch_streams = Histogram("pavdm_batch_streams", "Streams in the largest stage call of a tick", run,
                                       buckets=(1, 2, 4, 8, 16, 32, 64), registry=reg)
        self.restarts = Counter("pavdm_stage_restarts", "Stage actors rebuilt after a failure", run, registry=reg)
        self.checkpoint_seconds = Histogram("pavdm_checkpoint_seconds", "Time to write one checkpoint", run,
                                            buckets=TICK_BUCKETS, registry=reg)
        self.prompt_changes = Counter("pavdm_prompt_changes", "Prompt changes applied while the video is made", run,
                                      registry=reg)
        self.live_seconds = Gauge("pavdm_live_seconds", "Seconds made so far of a video that runs until stopped", run,
                                  registry=reg)
        self.errors = Counter("pavdm_errors", "Errors by kind", [*run, "kind"], registry=reg)
        for stage in range(stages):  # series exist (at zero) from the start
            self.call_seconds.labels(run_id, str(stage))
            self.handoff_bytes.labels(run_id, str(stage))
        self.restarts.labels(run_id)
        self.server = None

    def forget(self, run_id: str) -> None:
        """Drop the series of one video (its run_id label) from every metric that has them."""
        for metric in (self.frames, self.chunks, self.fps, self.eta, self.first_frame, self.checkpoint_seconds,
                       self.prompt_changes, self.live_seconds):
            with contextlib.suppress(KeyError):
                metric.remove(run_id)

    def serve(self, host: str, port: int | None) -> None:
        """Expose /metrics on host:port: exactly that port (a UserError if it is taken), 0 = not at all, None =
        the first free one of AUTO_PORTS (DEFAULT_PORT unless it is taken; a warning names any other)."""
        if port == 0:
            return
        if port is not None:
            self.server = listen(host, port, self.registry)
            if self.server is None:
                raise UserError(f"metrics.port {port} is taken on {host}: choose another, metrics.port=null for a "
                                "free one, or metrics.port=0 for none")
            return
        self.server = next(filter(None, (listen(host, candidate, self.registry) for candidate in AUTO_PORTS)))
        if self.server.server_port != DEFAULT_PORT:
            log.warning("metrics port %d is taken; serving metrics on http://%s:%d/metrics instead",
                        DEFAULT_PORT, host, self.server.server_port)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
