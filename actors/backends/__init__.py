"""Model backends behind the one velocity contract."""
