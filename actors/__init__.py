"""Model backends and the Ray actors that host them."""
