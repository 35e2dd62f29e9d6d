"""`normopt experiments`: the original wrapper's four experiments, reproduced, and an LM.

    convex     quadratic L(w) = 0.5 w^T Q w - b^T w, gap to the closed-form optimum
    lr-sweep   Adam vs NormalizedOptimizer(Adam) over learning rates 1e-4..1
    mlp        30-layer Dense/BatchNorm/Dropout classifier, SGD-nesterov and Adam
    cnn        small conv-BN-ReLU network on the same images
    lm         small causal transformer on Python stdlib characters: AdamW,
               normalized AdamW (l2; per-layer map), Muon; `--sweep` for rates

Modules: `problems` (quadratic + optimum), `data` (datasets), `models`,
`specs` (which optimizer each run uses), `runner` (training loops),
`suite` (the experiments themselves), `report` (table, JSON, plots), `cli`;
for lm: `lm_data` (corpus), `lm_model`, `lm` (arms, training, sweep), `lm_report`.
"""
