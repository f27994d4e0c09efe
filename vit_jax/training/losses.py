"""Classification losses, selected by `config.loss`."""

import jax
import jax.numpy as jnp
import optax

LOSSES = ('softmax_xent', 'sigmoid_xent')


def classification_loss(logits: jax.Array, labels: jax.Array, *, kind: str,
                        label_smoothing: float = 0.0) -> jax.Array:
  """Mean loss; `labels` are class ids (n,) or (multi-)hot targets (n, C)."""
  num_classes = logits.shape[-1]
  if labels.ndim == 1:
    labels = jax.nn.one_hot(labels, num_classes)
  labels = labels.astype(jnp.float32)
  if label_smoothing:
    labels = labels * (1 - label_smoothing) + label_smoothing / num_classes
  if kind == 'softmax_xent':
    return jnp.mean(optax.softmax_cross_entropy(logits, labels))
  if kind == 'sigmoid_xent':
    return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, labels), -1))
  raise ValueError(f'unknown loss {kind!r}; expected one of {LOSSES}.')
