"""Which module executes a wrapper step on the current Keras backend.

    TensorFlow   normopt.ops.tf_backend   the compiled op where it can run,
                                          tf.distribute, sparse gradients
    JAX, torch   normopt.ops.keras_step   keras.ops throughout, stateless

Both expose the same functions (step_context, unscale_all, replicas_in_sync,
all_reduce_sum where replicas > 1, step_if_finite, run_inner_step,
run_fused_update on TensorFlow, norms_variable, record_norms, norms_value,
unconverted), so the wrappers call `current().name(...)` without importing
TensorFlow on the other backends.
"""

import keras


def current():
    """The executor module of Keras's backend."""
    # Import statements, not importlib: a step calls this inside a user's
    # tf.function, where AutoGraph would try to convert importlib's
    # functions and warn that it cannot.
    if keras.backend.backend() == "tensorflow":
        from normopt.ops import tf_backend

        return tf_backend
    from normopt.ops import keras_step

    return keras_step
