"""The tiny toy config the pipeline tests share: 2 recipes x 16 images per class, 48 px, 2 epochs.

The gate's absolute limits are 0, and its parity limit 1: those tests are about the pipeline's
mechanics, not about what two epochs learn. A two-epoch model's scores sit close together, and
with the balanced threshold (evaluate.cost.defect_rate 0.5) the threshold can fall among them,
where the last float bit of another CPU flips decisions between the float model and its bundle:
the gate still measures and reports that disagreement; these tests do not fail on it.
"""

TINY: list[str] = [
    "synth.recipes=2", "synth.per_class=16", "synth.size=48", "preprocess.size=[48,48]",
    "train.epochs=2", "train.threads=1", "train.batch_size=16", "evaluate.bootstrap=20",
    "compress.repeats=10", "compress.warmup=2", "compress.rounds=1", "compress.threads=[1]",
    "compress.prune_ratios=[]", "compress.openvino=false", "export.golden_size=8", "export.reference_images=16",
    "gate.min_balanced_accuracy=0", "gate.min_recipe_balanced_accuracy=0", "gate.max_ece=1",
    "gate.max_parity_disagreement=1",
    "pipeline.baseline=false",
]
