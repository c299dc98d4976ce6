"""pavdm from Python: `ProgressivePipeline.from_pretrained("tiny")`, a call or `stream` for a video, write_video."""

from pavdm.pipeline import ProgressivePipeline, ProgressivePipelineOutput
from pavdm.video import VideoChunk, write_video

__all__ = ["ProgressivePipeline", "ProgressivePipelineOutput", "VideoChunk", "write_video"]
