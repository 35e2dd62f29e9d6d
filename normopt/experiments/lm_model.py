"""A small causal transformer language model, written with Keras layers.

    tokens (batch, T) -> token_embedding + position_embedding
      -> depth x block: x + attention(LN(x)); x + mlp(LN(x))     (pre-norm)
      -> final_ln -> lm_head (Dense, vocab logits)

    attention: one Dense(3 * width) "qkv" projection, `heads` heads of
               width / heads, softmax(q k^T / sqrt(d_head) + causal mask) v,
               then a Dense(width) "out" projection
    mlp:       Dense(4 * width, gelu) "mlp_in", Dense(width) "mlp_out"

The attention is written here rather than with keras.layers.MultiHeadAttention
so that every hidden weight is one 2-d (inputs, outputs) matrix: the
per-layer norms (spectral for hidden matrices) and keras.optimizers.Muon
(which orthogonalises 2-d variables only, and gives 3-d ones to its AdamW
step) then see the matrices as the layer uses them. Variable paths, which the
optimizers match on:

    token_embedding/embeddings, position_embedding/embeddings
    block{i}_attention/qkv/{kernel,bias}, block{i}_attention/out/{kernel,bias}
    block{i}_mlp_in/{kernel,bias}, block{i}_mlp_out/{kernel,bias}
    block{i}_ln1/{gamma,beta}, block{i}_ln2/..., final_ln/..., lm_head/{kernel,bias}
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="normopt_experiments")
class CausalSelfAttention(keras.layers.Layer):
    """Multi-head self-attention in which position t attends to positions <= t only."""

    def __init__(self, width, heads, **kwargs):
        super().__init__(**kwargs)
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.width, self.heads = width, heads
        self.qkv = keras.layers.Dense(3 * width, name="qkv")
        self.out = keras.layers.Dense(width, name="out")

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.out.build(tuple(input_shape[:-1]) + (self.width,))

    def _split_heads(self, x, length):
        x = ops.reshape(x, (-1, length, self.heads, self.width // self.heads))
        return ops.transpose(x, (0, 2, 1, 3))  # (batch, heads, T, d_head)

    def call(self, x):
        length = ops.shape(x)[1]
        q, k, v = ops.split(self.qkv(x), 3, axis=-1)
        q, k, v = (self._split_heads(t, length) for t in (q, k, v))
        scale = 1.0 / (self.width // self.heads) ** 0.5
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * scale
        causal = ops.tril(ops.ones((length, length), dtype="bool"))
        scores = ops.where(causal, scores, ops.full_like(scores, -1e9))
        mixed = ops.matmul(ops.softmax(scores, axis=-1), v)
        mixed = ops.reshape(ops.transpose(mixed, (0, 2, 1, 3)), (-1, length, self.width))
        return self.out(mixed)

    def get_config(self):
        return dict(super().get_config(), width=self.width, heads=self.heads)


@keras.saving.register_keras_serializable(package="normopt_experiments")
class PositionEmbedding(keras.layers.Layer):
    """x + P[:T]: a learned vector per position, added to the token embeddings."""

    def __init__(self, context, **kwargs):
        super().__init__(**kwargs)
        self.context = context

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            (self.context, input_shape[-1]), initializer="uniform", name="embeddings")

    def call(self, x):
        return x + self.embeddings[: ops.shape(x)[1]]

    def get_config(self):
        return dict(super().get_config(), context=self.context)


def causal_lm(vocab_size, context, width=128, depth=2, heads=4, mlp_ratio=4):
    """The model: int token ids (batch, context) -> logits (batch, context, vocab_size)."""
    tokens = keras.Input((context,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocab_size, width, name="token_embedding")(tokens)
    x = PositionEmbedding(context, name="position_embedding")(x)
    for i in range(depth):
        h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"block{i}_ln1")(x)
        x = x + CausalSelfAttention(width, heads, name=f"block{i}_attention")(h)
        h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"block{i}_ln2")(x)
        h = keras.layers.Dense(mlp_ratio * width, activation="gelu", name=f"block{i}_mlp_in")(h)
        x = x + keras.layers.Dense(width, name=f"block{i}_mlp_out")(h)
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_ln")(x)
    logits = keras.layers.Dense(vocab_size, name="lm_head")(x)
    return keras.Model(tokens, logits, name=f"causal_lm_{depth}x{width}")
