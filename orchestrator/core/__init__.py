"""The pure core: schedule math, bands, the sampler, prompts, configs and input rules; no I/O, no Ray, no model code."""
