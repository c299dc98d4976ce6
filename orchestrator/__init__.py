"""Control plane and pure core of pavdm: schedule math, sampler, configuration and CLI."""
