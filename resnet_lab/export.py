"""Models that travel: a checkpoint of ours in the format timm reads from the Hugging Face Hub, and its upload.

    python -m resnet_lab export --model runs/pets_r50.safetensors --out export/pets_r50 [--push USER/NAME]

For an arch timm has (resnet18 ... resnet152, the ImageNet stems), the weights are loaded into timm's own model of
that arch (the key names are the same, which the equivalence tests prove) with the checkpoint's mean/std, input
size, crop and interpolation, and written by timm's `save_for_hf`: `config.json` (`architecture`, `num_classes`,
`label_names`, `pretrained_cfg`) and `model.safetensors`, so `timm.create_model("hf-hub:USER/NAME",
pretrained=True)` builds it with nothing of ours installed. For archs timm does not have (the CIFAR nets, the plain
twins) the export says so and writes our own format (`model.safetensors` + `model.json`, loaded by
`weights.load_checkpoint`). `--push` uploads the folder with huggingface_hub's client; the token comes from where
huggingface_hub looks (HF_TOKEN, `huggingface-cli login`) and is never printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from .checkpoints import WeightsUnavailable, load_checkpoint, meta_path

CFG_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation")


def timm_has(arch: str) -> bool:
    import timm

    return arch in timm.list_models()


def export(model_path: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the checkpoint at `model_path` into the folder `out`; returns what was written and in which format."""
    loaded = load_checkpoint(model_path)
    arch = str(loaded.meta.get("arch") or "")
    classes = list(loaded.meta.get("classes") or [])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not timm_has(arch):
        shutil.copyfile(model_path, out / "model.safetensors")
        shutil.copyfile(meta_path(model_path), out / "model.json")
        return {"format": "resnet-lab", "arch": arch, "files": ["model.safetensors", "model.json"],
                "why": f"timm has no {arch} (a net of this project's own); load it with "
                       "resnet_lab.weights.load_checkpoint"}
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


def push(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload `folder` to the Hub repo `repo_id` (created if missing); returns the repo's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="export from resnet-lab")
    return f"{api.endpoint}/{repo_id}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a checkpoint of ours (.safetensors with its JSON)")
    p.add_argument("--out", required=True, help="folder to write the export into")
    p.add_argument("--push", default=None, metavar="USER/NAME", help="then upload the folder to this Hub repo")
    p.add_argument("--private", action="store_true", help="with --push: create the repo private")


def run(args: argparse.Namespace) -> int:
    try:
        done = export(args.model, args.out)
    except (WeightsUnavailable, ValueError, RuntimeError, OSError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    if done["format"] != "timm":
        print(f"export: {done['why']}; wrote our own format", file=sys.stderr)
    print(json.dumps({**done, "out": str(args.out)}))
    if args.push:
        try:
            url = push(args.out, args.push, args.private)
        except Exception as e:  # no token, no network, no rights: the client's own words, never the token
            print(f"export: --push {args.push} failed ({type(e).__name__}: {str(e).splitlines()[0][:300]})",
                  file=sys.stderr)
            return 1
        print(f"pushed to {url}; load it with timm.create_model('hf-hub:{args.push}', pretrained=True)"
              if done["format"] == "timm" else f"pushed to {url}")
    return 0

