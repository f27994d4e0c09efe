"""Parameters in and out: released .npz layouts, Hugging Face, transfer onto a new model, the run record; exporters by name."""
