"""Parameters, MACs, FLOPs and activations of models (fvcore), and ``zoo count``.

Convention, stated in every output: a MAC is one fused multiply-add. fvcore calls
it a "flop"; real floating-point operations are about twice as many (FLOPs = 2 x
MACs). "conv+linear" MACs are what torchvision documents as "GFLOPS"; the fvcore
total adds the norms. Element-wise adds, activations and pooling are not counted.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

CONVENTION = (
    "MACs = fused multiply-adds (fvcore's 'flops'); FLOPs = 2 x MACs. conv+linear MACs = torchvision's "
    "'GFLOPS'; total MACs add the norms. Adds, activations and pooling are not counted."
)
FORMATS = ("table", "markdown", "csv", "json")


@dataclass
class Cost:
    model: str
    input_size: tuple[int, int, int]
    params: int
    macs: float  # fvcore total: conv + linear + norms
    conv_linear_macs: float
    activations: int  # output elements of convs and linears (fvcore's activation count)
    stages: dict[str, float] = field(default_factory=dict)  # MACs per stem/stage/head, on request

    @property
    def flops(self) -> float:
        return 2 * self.macs


def _stage_of(module_name: str) -> str:
    top = module_name.split(".")[0]
    return top if top.startswith("layer") else ("head" if top in ("fc", "global_pool") else "stem")


def count(
    model: nn.Module, input_size: tuple[int, int, int] | None = None, *, name: str = "", stages: bool = False
) -> Cost:
    """The cost of ``model`` for one image of ``input_size`` (default: its pretrained_cfg's)."""
    with warnings.catch_warnings():  # fvcore imports torch.jit.script, deprecated in torch 2.x
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis

    size = tuple(input_size or model.pretrained_cfg["input_size"])
    x = torch.zeros(1, *size, device=next(model.parameters()).device)  # where the model is
    training = model.training
    model.eval()
    logging.getLogger("fvcore").setLevel(logging.ERROR)  # "unsupported op aten::add" is expected
    with torch.no_grad():
        flops = FlopCountAnalysis(model, x)
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_op = flops.by_operator()
        acts = ActivationCountAnalysis(model, x)
        acts.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        per_stage: dict[str, float] = {}
        if stages:
            for module, macs in flops.by_module().items():
                if module and "." not in module:  # top-level children only
                    per_stage[_stage_of(module)] = per_stage.get(_stage_of(module), 0) + macs
        # fvcore traces lazily, on the first total: still in eval mode, so batch norms' statistics stay as they are
        macs, activations = float(flops.total()), int(acts.total())
    model.train(training)  # as the caller left it
    return Cost(
        model=name or type(model).__name__,
        input_size=size,  # type: ignore[arg-type]
        params=sum(p.numel() for p in model.parameters()),
        macs=macs,
        conv_linear_macs=float(by_op.get("conv", 0) + by_op.get("linear", 0) + by_op.get("addmm", 0)),
        activations=activations,
        stages=per_stage,
    )


def count_models(
    names: list[str], input_size: int | None = None, *, stages: bool = False, progress: bool = True
) -> list[Cost]:
    """Costs of registered models (names or fnmatch patterns), each at the given input size or its family's own
    (224 for the ImageNet stems, 32 for the CIFAR ones: one size per family, whatever size its weights train at)."""
    from tqdm import tqdm

    from .data import default_pretrained_cfg
    from .factory import create_model
    from .registry import expand_models, get_entry

    resolved = expand_models(names)
    costs = []
    for name in tqdm(resolved, desc="count", disable=not progress, leave=False):
        model = create_model(name)
        config = get_entry(name).config
        own = default_pretrained_cfg(config) if config is not None else model.pretrained_cfg
        size = own["input_size"]
        costs.append(count(model, (size[0], input_size, input_size) if input_size else size, name=name, stages=stages))
    return costs
