"""The train loop and what it owns: state, step, optimizer, sharding, checkpoints, metrics."""
