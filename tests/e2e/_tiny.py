"""The tiny toy config the pipeline tests share: 2 recipes x 16 images per class, 48 px, 2 epochs.

The gate's absolute limits are 0: those tests are about the pipeline's mechanics, not about
what two epochs learn.
"""

TINY: list[str] = [
    "synth.recipes=2", "synth.per_class=16", "synth.size=48", "preprocess.size=[48,48]",
    "train.epochs=2", "train.threads=1", "train.batch_size=16", "evaluate.bootstrap=20",
    "compress.repeats=10", "compress.warmup=2", "compress.rounds=1", "compress.threads=[1]",
    "compress.prune_ratios=[]", "compress.openvino=false", "export.golden_size=8", "export.reference_images=16",
    "gate.min_balanced_accuracy=0", "gate.min_recipe_balanced_accuracy=0", "gate.max_ece=1",
    "pipeline.baseline=false",
]
