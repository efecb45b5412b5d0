"""Models that travel: a checkpoint of ours in the format timm reads from the Hugging Face Hub, and its upload.

    python -m resnet_lab export --model runs/pets_r50.safetensors --out export/pets_r50 [--push USER/NAME]

For an arch timm has (resnet18 ... resnet152, the ImageNet stems), the weights are loaded into timm's own model of
that arch (the key names are the same, which the equivalence tests prove) with the checkpoint's mean/std, input
size, crop and interpolation, and written by timm's `save_for_hf`: `config.json` (`architecture`, `num_classes`,
`label_names`, `pretrained_cfg`) and `model.safetensors`, so `timm.create_model("hf-hub:USER/NAME",
pretrained=True)` builds it with nothing of ours installed. For archs timm does not have (the CIFAR nets, the plain
twins) the export says so and writes our own format (`model.safetensors` + `model.json`, loaded by
`weights.load_checkpoint`); that JSON keeps only what describes the model (`published_meta`), not the training
run's command, config or data paths, which name folders on the trainer's disk. `--push` uploads exactly the files
this export wrote, in one commit (never whatever else lies in `--out`: an earlier export's files, notes), with
huggingface_hub's client; the token comes from where huggingface_hub looks (HF_TOKEN, `huggingface-cli login`) and
is never printed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .checkpoints import load_checkpoint

CFG_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation")
# What a published model.json keeps, field by field: what loads the model and what it was trained on and scored,
# never where (the run's `command`, `command_full` and `config` hold --out, --data folder:PATH and --data-dir;
# `data` holds the data's root and the skipped files' paths; `pretrained.spec` a weights file's path).
PUBLISHED = ("arch", "num_classes", "classes", "norm", *CFG_KEYS, "seed", "val_acc", "test_acc", "test_acc_is_val",
             "best_epoch", "epochs_run", "global_batch", "precision", "torch_version", "augment", "history")
PUBLISHED_DATA = ("name", "clutter", "train_seed", "val_seed", "test_seed", "n_train", "n_val", "n_test", "checksum",
                  "val_fraction", "layout", "counts", "test_split", "in_memory")
PUBLISHED_PRETRAINED = ("head", "pretrained_num_classes", "pretrained_classes", "freeze", "frozen_params",
                        "backbone_lr_scale")


def timm_has(arch: str) -> bool:
    import timm

    return arch in timm.list_models()


def published_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint JSON's fields that describe the model (`PUBLISHED`), without any that name the trainer's
    disk; a pretrained start keeps its source only when it is a hub tag or a named net, not a file."""
    out = {k: meta[k] for k in PUBLISHED if k in meta}
    if isinstance(meta.get("data"), dict):
        out["data"] = {k: v for k, v in meta["data"].items() if k in PUBLISHED_DATA}
    if isinstance(meta.get("pretrained"), dict):
        start = meta["pretrained"]
        out["pretrained"] = {k: v for k, v in start.items() if k in PUBLISHED_PRETRAINED}
        if not str(start.get("source", "file:")).startswith("file:"):
            out["pretrained"]["source"] = start["source"]
    return out


def export(model_path: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the checkpoint at `model_path` into the folder `out`; returns what was written and in which format."""
    loaded = load_checkpoint(model_path)
    arch = str(loaded.meta.get("arch") or "")
    classes = list(loaded.meta.get("classes") or [])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not timm_has(arch):
        shutil.copyfile(model_path, out / "model.safetensors")
        (out / "model.json").write_text(json.dumps(published_meta(loaded.meta), indent=2, sort_keys=True) + "\n")
        return {"format": "resnet-lab", "arch": arch, "files": ["model.safetensors", "model.json"],
                "why": f"timm has no {arch} (a net of this project's own); load it with "
                       "resnet_lab.models.weights.load_checkpoint"}
    import timm
    from timm.models import save_for_hf

    net = timm.create_model(arch, pretrained=False, num_classes=loaded.model.num_classes)
    net.load_state_dict(loaded.model.state_dict(), strict=True)
    cfg = {k: loaded.pretrained_cfg[k] for k in CFG_KEYS if k in loaded.pretrained_cfg}
    net.pretrained_cfg = {**net.pretrained_cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}}
    model_config: dict[str, Any] = {"label_names": classes} if classes else {}
    save_for_hf(net.eval(), str(out), model_config=model_config, safe_serialization=True)
    return {"format": "timm", "arch": arch, "files": ["config.json", "model.safetensors"],
            "num_classes": loaded.model.num_classes}


def push(folder: str | Path, repo_id: str, files: list[str], private: bool = False) -> str:
    """Upload `files` (names in `folder`, the ones the export wrote) to the Hub repo `repo_id` (created if missing),
    in one commit; nothing else in `folder` is sent. Returns the repo's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private)
    api.create_commit(repo_id=repo_id, commit_message="export from resnet-lab",
                      operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(Path(folder) / name))
                                  for name in files])
    return f"{api.endpoint}/{repo_id}"
