"""What the engine needs from an executor: the stages and the sink, run in this process or as Ray actors."""

from __future__ import annotations

from typing import Any, Protocol

from actors.video_sink import VideoSize
from orchestrator.core.config import Config
from orchestrator.core.planner import StageTick
from orchestrator.core.prompts import ChunkPrompts
from orchestrator.core.sampler import Window
from orchestrator.core.schedule import Geometry
from orchestrator.state.run_state import SinkState

Ref = Any  # a result the executor hands back: the value itself in process, an ObjectRef on Ray


class Executor(Protocol):
    """P stages and one sink. Calls that return a Ref may run ahead (Ray); get() waits for their values. Calls
    that return a value wait for it and raise the UserError an actor raised as itself."""

    stages_count: int
    latent_shape: tuple[int, int, int]  # [Ch, h, w] of one latent frame

    def open(self, stream: str, config: Config, size: VideoSize, prompts: ChunkPrompts, workdir: str,
             resume: SinkState | None) -> None:
        """Open the stream's video in the sink (segments in `workdir`), fresh or resumed."""

    def revise(self, stream: str, config: Config, size: VideoSize, prompts: ChunkPrompts) -> None:
        """New settings of a stream steered while it is made, for the chunks the sink writes after them."""

    def start(self, stream: str, seed: int, geometry: Geometry, shares: list[Window]) -> list[Ref]:
        """Give every stage its share of the stream's window; each stage's published share."""

    def tick(self, plans: list[dict[str, StageTick]], peers: list[list[Ref]]) -> list[tuple[Ref, Ref, Ref]]:
        """One tick of every stage (plans per stream, the peers' published chunks it reads): per stage its
        (published chunks, emitted chunks, TickStats)."""

    def write(self, emitted: list[Ref]) -> Ref:
        """Send one tick's emitted chunks to the sink; frames written so far per stream."""

    def save_checkpoint(self, stream: str, uri: str, keep: int, next_tick: int, meta: dict,
                        published: list[Ref]) -> int:
        """Checkpoint the stream after every write before it; the frames it covers."""

    def finish(self, stream: str) -> str:
        """Join the stream's video into its outputs; the video's path."""

    def abort(self, stream: str, timeout: float) -> None:
        """Drop the stream's open segments in the sink."""

    def drop(self, stream: str) -> None:
        """Make the stages forget a stream that left early."""

    def get(self, refs: Ref) -> Any:
        """The values of a Ref or a list of them."""

    def died(self, err: BaseException) -> bool:
        """Whether an error means a stage or the sink is gone (the pipeline must be rebuilt)."""

    def cause(self, err: Exception) -> Exception:
        """The error an actor raised, unwrapped."""

    def recent_frames(self, stream: str, index: int, timeout: float) -> tuple[list, bool | None]:
        """The sink's frames of a stream from `index` on (waiting up to `timeout` for one), and whether it is done
        (None for a stream the sink does not know)."""

    async def frames_since(self, stream: str, index: int, timeout: float) -> tuple[list, bool | None]:
        """recent_frames, awaited without blocking an event loop."""

    def shutdown(self) -> None:
        """Let the stages and the sink go."""
