"""Tools beside training: AOT compile, benchmarks, step profile, model summary."""
