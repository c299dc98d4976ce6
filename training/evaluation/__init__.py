"""Evaluation of generation on the procedural world: long videos and stills, scored by the probe."""
