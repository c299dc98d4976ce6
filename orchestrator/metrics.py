"""Prometheus metrics of a pipeline run, every series labelled with its run_id."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

TICK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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
        self.fps = Gauge("pavdm_frames_per_second", "Frames written per second since the run started", run,
                         registry=reg)
        self.eta = Gauge("pavdm_eta_seconds", "Estimated seconds until the video is complete", run, registry=reg)
        self.streams = Gauge("pavdm_active_streams", "Videos currently in the pipeline", run, registry=reg)
        self.batch_streams = Histogram("pavdm_batch_streams", "Streams in the largest stage call of a tick", run,
                                       buckets=(1, 2, 4, 8, 16, 32, 64), registry=reg)
        self.restarts = Counter("pavdm_stage_restarts", "Stage actors rebuilt after a failure", run, registry=reg)
        self.checkpoint_seconds = Histogram("pavdm_checkpoint_seconds", "Time to write one checkpoint", run,
                                            buckets=TICK_BUCKETS, registry=reg)
        self.errors = Counter("pavdm_errors", "Errors by kind", [*run, "kind"], registry=reg)
        for stage in range(stages):  # series exist (at zero) from the start
            self.call_seconds.labels(run_id, str(stage))
            self.handoff_bytes.labels(run_id, str(stage))
        self.restarts.labels(run_id)
        self.server = None

    def forget(self, run_id: str) -> None:
        """Drop the series of one video (its run_id label) from every metric that has them."""
        for metric in (self.frames, self.chunks, self.fps, self.eta, self.checkpoint_seconds):
            with contextlib.suppress(KeyError):
                metric.remove(run_id)

    def serve(self, host: str, port: int) -> None:
        """Expose /metrics on host:port (port 0 disables)."""
        if port:
            self.server, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
