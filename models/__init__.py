"""Models shipped with pavdm, in diffusers format (load them with --model NAME)."""
