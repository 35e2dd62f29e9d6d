"""`normopt demo`: plain Adam vs NormalizedOptimizer(Adam) vs ClippedOptimizer(Adam).

Trains the same small MLP on scikit-learn's bundled 8x8 handwritten digits
(shipped inside the package: no download) with each optimizer, showing
progress, then prints final loss and accuracy for each.
"""

import time


def add_arguments(parser):
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def requirements(args):
    """(module, extra) pairs the demo needs (checked by normopt.cli)."""
    del args
    return [("sklearn", "demo")]


def load_digits_split(seed=0):
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    order = np.random.RandomState(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def _model(seed):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(10),
        ]
    )


def _optimizers(lr):
    import keras

    from normopt import ClippedOptimizer, NormalizedOptimizer

    return {
        "Adam": lambda: keras.optimizers.Adam(lr),
        "NormalizedOptimizer(Adam, l2)": lambda: NormalizedOptimizer(
            keras.optimizers.Adam(lr), "l2"
        ),
        "ClippedOptimizer(Adam, l2, 1.0)": lambda: ClippedOptimizer(
            keras.optimizers.Adam(lr), "l2", clipnorm=1.0
        ),
    }


def _train(label, make, data, args, on_epoch_end):
    """Trains one model with optimizer `make()`; returns its row of the table."""
    import keras

    (x, y), (xt, yt) = data
    model = _model(args.seed)
    opt = make()
    model.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    hist = model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: on_epoch_end())],
    )
    seconds = time.perf_counter() - start
    test_loss, test_acc = model.evaluate(xt, yt, verbose=0)
    path = getattr(opt, "last_path", None)
    return (
        label,
        hist.history["loss"][-1],
        hist.history["accuracy"][-1],
        test_loss,
        test_acc,
        seconds,
        path.name if path else "keras",
    )


def run(args):
    from normopt import progress

    data = load_digits_split(args.seed)
    (x, _), (xt, _) = data
    runs = _optimizers(args.lr)
    rows = []
    # A live bar on a terminal; one line per optimizer finished otherwise.
    with progress.bar(len(runs) * args.epochs, "demo", "epoch") as bar:
        for label, make in runs.items():
            bar.set_postfix_str(label)
            rows.append(_train(label, make, data, args, bar.update))
    print()
    header = f"{'optimizer':<32} {'train loss':>10} {'train acc':>9} {'test loss':>9} {'test acc':>8} {'time s':>7}  path"
    print(header)
    print("-" * len(header))
    for label, loss, acc, tloss, tacc, sec, path in rows:
        print(f"{label:<32} {loss:>10.4f} {acc:>9.4f} {tloss:>9.4f} {tacc:>8.4f} {sec:>7.1f}  {path}")
    print(
        f"\ndigits: {len(x)} train / {len(xt)} test images, {args.epochs} epochs, "
        f"batch {args.batch_size}, lr {args.lr}"
    )
    return 0
