"""Input pipelines: sources of host-local batches for the trainer."""
