"""Run state and outputs on disk: settings files, run folders, checkpoints, segments, MP4 and Arrow writers."""
