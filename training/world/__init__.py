"""The procedural world of bouncing shapes and the probe that reads its frames back."""
