"""Input pipelines: sources of host batches for the trainer, by the scheme
of `config.dataset` (registry.py). tf.data for TFDS, image folders and
prepared TFDS directories; Grain over a global index for ArrayRecord shards
(written by convert.py) and the bundled digits, without TensorFlow."""
