"""Parameter-name facts that the exporter and the training methods share: the LoRA adapters' suffixes and the
block a parameter belongs to."""
import re

LORA_A, LORA_B = "lora_a", "lora_b"  # parameter suffixes: <layer>.lora_a (R, in), <layer>.lora_b (out, R)

_BLOCK_INDEX = re.compile(r"(?:^|\.)(?:blocks|layers|layer)\.(\d+)(?=\.)")


def block_key(name: str):
    """The block a parameter belongs to: the indices of the ``blocks``/``layers``/``layer`` components of its
    name (``(stage, block)`` when nested), or None."""
    return tuple(int(m.group(1)) for m in _BLOCK_INDEX.finditer(name)) or None
