"""Compression of a trained PyTorch model: the techniques, as stages a recipe puts in order.

The data path: a model and its task's data -> the recipe's stages (:mod:`.stages`; structured
channel pruning and strided kernel sparsity in :mod:`.structured`, low-rank, separable and
asymmetric factorisations and global pooling in :mod:`.decomposition`, data-free neuron merging in
:mod:`.merging`, pruning and weight sharing in :mod:`.unstructured`, fine-tuning in :mod:`.finetune`;
replaced layers are described for the container by :mod:`.architecture`) -> the coding into a ``.sqz`` container (:mod:`.coding`) -> the
decoded model, measured (:mod:`.measure`; its speed-up over the dense one timed by :mod:`.latency`) into a :class:`Report`.

>>> from squeezetune.compression import Recipe, known_stages
>>> sorted(known_stages())
['decompose', 'finetune', 'gradual_prune', 'iterative_prune', 'merge', 'neurons', 'prune', 'share', 'soft_share', 'strided', 'structured']

This package needs torch and numpy alone; Ray, Optuna and MLflow belong to :mod:`squeezetune.search`.
"""

from squeezetune.compression.baseline import dense_bytes, dense_model, load_weights, save_weights, train_dense
from squeezetune.compression.coding.codec import CoderChoice, EncodeConfig
from squeezetune.compression.decode import decode_bytes, decode_file
from squeezetune.compression.finetune import FinetuneConfig, evaluate, pick_device, train
from squeezetune.compression.latency import LatencyConfig, speedup
from squeezetune.compression.pipeline import compress, report_path
from squeezetune.compression.recipes import BUILTIN_RECIPES, Recipe, Step, load_recipe
from squeezetune.compression.report import OUTCOME, Report, StageRecord, TensorRecord
from squeezetune.compression.stages import Context, EpochEvent, StageConfig, apply_stage, known_stages, register_stage, stage_config
from squeezetune.compression.structured.stage import StructuredConfig
from squeezetune.compression.tensors import Target, compressible
from squeezetune.compression.unstructured.pruning import Granularity, PruneConfig
from squeezetune.compression.unstructured.sharing import ShareConfig

__all__ = [
    "BUILTIN_RECIPES",
    "OUTCOME",
    "CoderChoice",
    "Context",
    "EncodeConfig",
    "EpochEvent",
    "FinetuneConfig",
    "Granularity",
    "LatencyConfig",
    "PruneConfig",
    "Recipe",
    "Report",
    "ShareConfig",
    "StageConfig",
    "StageRecord",
    "Step",
    "StructuredConfig",
    "Target",
    "TensorRecord",
    "apply_stage",
    "compress",
    "compressible",
    "decode_bytes",
    "decode_file",
    "dense_bytes",
    "dense_model",
    "evaluate",
    "known_stages",
    "load_recipe",
    "load_weights",
    "pick_device",
    "register_stage",
    "report_path",
    "save_weights",
    "speedup",
    "stage_config",
    "train",
    "train_dense",
]
