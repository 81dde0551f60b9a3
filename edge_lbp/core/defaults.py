"""The LBP settings an export uses when the user names none, the optimizers it can build and who can build its
graphs: one place for the
CLI, ``export_model``, the demo and the core's own defaults (importable without numpy, so the CLI's parser can
show them)."""

SELECTION = "lp-tri:4"  # the paper's default: bases (u, v) with u + v < 4, r = 10
BLOCK = 8  # WHT block side in tokens (the paper's 8x8; a grid smaller than the block gets the smallest covering one)
AUTO = "auto"  # per layer: the largest block (<= BLOCK) that leaves every image MIN_BLOCKS blocks
MIN_BLOCKS = 4  # what ViT-B/16 at 224 px keeps with block 8 (a 14x14 grid padded to 16x16)
EXPORT_BLOCK = AUTO  # what an export uses by default (README "Adaptation accuracy": the measurements behind it)
ENERGY_EVERY = 8  # energy:r measures each layer's output-gradient energy, and re-selects, every this many passes
ENERGY_DECAY = 0.8  # weight of the running average's past at each measurement
OPTIMIZERS = ("adamw", "sgd")  # what an export can put in the optimizer graph (export.training builds them)
# Who builds an export's training, eval and optimizer graphs: our builder (edge_lbp.core.gradients: numpy and onnx
# only) or onnxruntime-training's artifact generator, the oracle the tests compare ours with (the ort extra).
GRADIENTS = ("own", "ort")
EXPORT_GRADIENTS = "own"  # what an export uses by default
