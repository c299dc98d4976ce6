"""The engine and its executors: video plans, the in-process executor, the Ray tick loop and its pipeline."""
