"""Serving: an OpenAI-shaped HTTP video API on Ray Serve, backed by the pipeline and the runs store."""
