"""LoRA adapters for ``--method lora:R``: rank-R updates beside frozen linear layers (workstation side).

Each targeted ``nn.Linear`` (a name ending in ``qkv``, ``proj``, ``fc1`` or ``fc2``) becomes ``y = x W^T + b +
(x A^T) B^T``, with ``A`` (R, in) and ``B`` (out, R) new parameters named ``<layer>.lora_a`` / ``<layer>.lora_b``
next to the layer's ``weight`` and ``bias`` (kept under their names, so the backbone's weights still load). ``B``
starts at zero, so the adapted model starts as the backbone; ``A`` is drawn from a fixed seed. The scale
``alpha / R`` of the LoRA paper is 1 here: with AdamW it only rescales the learning rate of the adapters. The
device folds ``B A`` into ``W`` when it writes the inference model (:mod:`edge_lbp.methods.lora.fold`).
"""
import copy
import functools
import math

from edge_lbp.core.names import LORA_A, LORA_B

# The presets' and timm's attention and MLP layers, and Hugging Face's (transformers 5: q/k/v/o_proj, mlp.fc1/fc2).
TARGETS = ("qkv", "proj", "fc1", "fc2", "q_proj", "k_proj", "v_proj", "o_proj")


@functools.lru_cache(maxsize=None)
def _lora_linear():
    """The adapted layer's class, defined on first use: torch is the workstation's, never imported on the device
    (this module is installed with the device package)."""
    import torch
    from torch import nn

    class LoraLinear(nn.Module):
        def __init__(self, base: nn.Linear, rank: int):
            super().__init__()
            if rank > min(base.in_features, base.out_features):
                raise ValueError(f"LoRA rank {rank} exceeds the {base.out_features}x{base.in_features} layer it "
                                 "adapts")
            self.weight, self.bias = base.weight, base.bias
            setattr(self, LORA_A, nn.Parameter(torch.empty(rank, base.in_features)))
            setattr(self, LORA_B, nn.Parameter(torch.zeros(base.out_features, rank)))
            nn.init.kaiming_uniform_(getattr(self, LORA_A), a=math.sqrt(5))  # nn.Linear's own initialisation

        def forward(self, x):
            update = (x @ getattr(self, LORA_A).t()) @ getattr(self, LORA_B).t()
            return nn.functional.linear(x, self.weight, self.bias) + update

    return LoraLinear


def add_adapters(module, rank: int):
    """A copy of the torch ``module`` with every targeted ``nn.Linear`` adapted; refuses a model with none."""
    import torch

    module = copy.deepcopy(module)
    targets = [(name, child) for name, child in module.named_modules()
               if isinstance(child, torch.nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS]
    if not targets:
        raise ValueError(f"lora:{rank} adapts linear layers named {', '.join(TARGETS)}; the model has none")
    lora_linear = _lora_linear()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for name, child in targets:
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attr, lora_linear(child, rank))
    return module
