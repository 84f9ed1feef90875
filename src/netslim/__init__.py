"""netslim: network slimming (Liu et al., ICCV 2017) for any PyTorch CNN.

    model = netslim.models.create("vgg19", num_classes=10)
    sparsity = netslim.sparsify(model, optimizer, lam=1e-4)  # Eq. 1 in any loop calling optimizer.step()
    plan = netslim.plan_pruning(model, percent=0.7)           # global |γ| threshold, guarded
    small = netslim.apply_plan(model, plan)                   # physically narrower, same outputs
    fast = netslim.deploy(small, device="cuda", dtype=torch.bfloat16, channels_last=True)  # BN folded
"""

from . import models, train  # train: the training loop's module (netslim.train.recalibrate_bn, ...)
from .budget import plan_for_budget
from .deployment import deploy, export_aoti, export_program
from .export import export_onnx, fold_batchnorm
from .graph import ChannelGraph, GraphError, trace_channels
from .latency import measure_table, plan_for_latency
from .layers import SelectBatchNorm
from .metrics import count_flops, count_params
from .plan import PruningPlan, plan_pruning
from .recalibration import recalibrate_bn
from .sparsity import Sparsity, SparsityRegularizer, init_bn_scales, sparsify
from .surgery import apply_plan, masked_model

__version__ = "0.1.0"
__all__ = [
    "ChannelGraph", "GraphError", "PruningPlan", "SelectBatchNorm", "Sparsity", "SparsityRegularizer", "apply_plan",
    "count_flops", "count_params", "deploy", "export_aoti", "export_onnx", "export_program", "fold_batchnorm",
    "init_bn_scales", "masked_model", "measure_table", "models", "plan_for_budget", "plan_for_latency", "plan_pruning",
    "recalibrate_bn", "sparsify", "trace_channels", "train",
]
