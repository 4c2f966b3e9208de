"""SeqIO feature converters: the query read in the decoder, and the hypermodel input."""

from __future__ import annotations

import seqio
import tensorflow as tf

_Spec = seqio.FeatureConverter.FeatureSpec


class EncDecFeatureConverter(seqio.EncDecFeatureConverter):
  """seqio's EncDecFeatureConverter, plus the query read in the decoder.

  A Task of a model trained with `query_in_decoder` gives each example the
  task feature `targets_read`: how many leading `targets` tokens (the query)
  the decoder reads but is not scored on. Their `decoder_loss_weights` become
  0, as `hyperflax.data.converters.teacher_forcing` weights them; examples
  without the feature convert as in seqio. Packing would drop the feature
  (seqio packs only the features it has lengths for), so it is refused.
  """

  def _convert_features(self, ds, task_feature_lengths):
    if self.pack and 'targets_read' in ds.element_spec:
      raise ValueError('EncDecFeatureConverter: examples with targets_read (a query read in the '
                       'decoder) cannot be packed; use pack=False')
    return super()._convert_features(ds, task_feature_lengths)

  def _convert_example(self, features):
    out = dict(super()._convert_example(features))
    if 'targets_read' in features:
      weights = out['decoder_loss_weights']
      scored = tf.range(tf.shape(weights)[0]) >= tf.cast(features['targets_read'], tf.int32)
      out['decoder_loss_weights'] = weights * tf.cast(scored, weights.dtype)
    return out


class HyperEncDecFeatureConverter(EncDecFeatureConverter):
  """EncDecFeatureConverter plus the hypermodel input.

  Task features `hyper_inputs`, `inputs`, `targets` become model features
  `hyper_input_tokens`, `encoder_input_tokens`, `decoder_input_tokens`,
  `decoder_target_tokens`, `decoder_loss_weights` (padded, not packed:
  packing would mix demonstrations of different tasks).
  """

  TASK_FEATURES = {**seqio.EncDecFeatureConverter.TASK_FEATURES,
                   'hyper_inputs': _Spec(dtype=tf.int32)}
  MODEL_FEATURES = {**seqio.EncDecFeatureConverter.MODEL_FEATURES,
                    'hyper_input_tokens': _Spec(dtype=tf.int32)}

  def __init__(self, pack: bool = False, **kwargs):
    if pack:
      raise ValueError('HyperEncDecFeatureConverter does not pack')
    super().__init__(pack=False, **kwargs)

  def _convert_example(self, features):
    out = dict(super()._convert_example(features))
    out['hyper_input_tokens'] = features['hyper_inputs']
    return out

  def get_model_feature_lengths(self, task_feature_lengths):
    out = dict(super().get_model_feature_lengths(task_feature_lengths))
    out['hyper_input_tokens'] = task_feature_lengths['hyper_inputs']
    return out
