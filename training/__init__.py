"""Procedural training world, the progressive training recipe and a probe that scores generated videos."""
