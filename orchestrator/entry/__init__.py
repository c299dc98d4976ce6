"""Entry points: the pavdm command, generate and resume, batch jobs and the HTTP API."""
