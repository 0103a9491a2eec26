"""The trainable model: encoders, identity / clothing heads, fusion, and every loss parameter."""

from reid.model.fusion import AttentionGatedFusion, get_fusion_module
from reid.model.grl import GradientReversal, grad_reverse
from reid.model.model import ENCODER_PREFIXES, Needs, Scalar, T2IReIDModel, build_model
from reid.model.norm import SyncBatchNorm1d, SyncBatchNorm2d, convert_sync_batchnorm

__all__ = [
    "ENCODER_PREFIXES",
    "AttentionGatedFusion",
    "GradientReversal",
    "Needs",
    "Scalar",
    "SyncBatchNorm1d",
    "SyncBatchNorm2d",
    "T2IReIDModel",
    "build_model",
    "convert_sync_batchnorm",
    "get_fusion_module",
    "grad_reverse",
]
