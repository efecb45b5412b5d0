"""What a finished run's checkpoint JSON says: what `weights.load_checkpoint` and the app need (arch, classes,
mean/std, input size) and the record of the run (data, augmentation, recipe, scores, timing, precision, the command
and the full config, the history).

Kept apart from the loop (`train`) so the loop reads as training and the record's fields sit in one place.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data.shapes import shapes_data_config
from ..runtime.distributed import Dist
from ..runtime.precision import dtype_name
from . import finetune
from .calibration import TemperatureFit
from .config import TrainConfig
from .recipe import Recipe
from .resume import RunState
from .run_data import RunData, with_decode_skips


def checkpoint_meta(config: TrainConfig, data: RunData, model: nn.Module, size: int, plan: Recipe, run: RunState,
                    *, test_acc: float, train_time: float, dist: Dist, dtype: torch.dtype | None,
                    precision_record: dict[str, Any], command: str | None, start: finetune.Pretrained | None,
                    frozen: list[Any], temperature: TemperatureFit | None = None) -> dict[str, Any]:
    """The JSON beside the run's weights; `run` holds its history and best epoch, `plan` its resolved recipe."""
    shapes = config.data == "shapes"
    history, best_epoch = run.history, run.best_epoch
    data_cfg = shapes_data_config(size) if shapes else {
        "input_size": [3, size, size], "mean": list(model.pretrained_cfg["mean"]),
        "std": list(model.pretrained_cfg["std"]), "crop_pct": model.pretrained_cfg.get("crop_pct", 1.0),
        "interpolation": model.pretrained_cfg.get("interpolation", "bilinear")}
    return {
        "arch": config.arch, "num_classes": len(data.classes), "classes": data.classes, **data_cfg,
        "seed": config.seed, "data": with_decode_skips(data, dist), "run": run.run,
        "augment": plan.augment.record(size, "shapes" if shapes else "cifar" if config.data.startswith("cifar")
                                       else "folder in memory" if data.record.get("in_memory") else "folder"),
        "val_acc": run.best_acc, "test_acc": test_acc, "test_acc_is_val": data.test is None,
        "best_epoch": best_epoch, "epochs_run": len(history),
        "recipe": {**plan.record(), "kept": "EMA" if history[best_epoch - 1].get("ema_kept") else "raw weights",
                   "temperature": temperature.record() if temperature else None},
        "train_time_s": round(train_time, 1),
        "epoch_time_s": round(sum(h["time_s"] for h in history) / len(history), 1),
        "device": str(dist.device), "world_size": dist.world_size, "global_batch": plan.batch_size,
        "per_rank_batch": plan.batch_size // dist.world_size,
        "precision": dtype_name(dtype), "precision_choice": precision_record,
        "num_threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "command": command or config.cli(), "command_full": config.cli(), "config": config.options(),
        **({"pretrained": {**start.record(), "freeze": config.freeze or finetune.NOTHING,
                           "frozen_params": len(frozen), "backbone_lr_scale": config.lr_scale}} if start else {}),
        "history": [{k: round(v, 5) for k, v in h.items()} for h in history],
    }
