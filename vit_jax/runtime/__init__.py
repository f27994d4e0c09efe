"""The process around a run: user errors, platforms, preemption, the workdir lease, coordination between processes."""
