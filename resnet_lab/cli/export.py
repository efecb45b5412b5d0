"""`python -m resnet_lab export`: a checkpoint in timm's Hub format (`models.export`), and its upload with --push."""

from __future__ import annotations

import argparse
import json
import sys

from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..models.checkpoints import WeightsUnavailable
from ..models.export import export, push
from .args import writable


def _repo_id(text: str) -> str:
    """--push's type: a Hub repo id (USER/NAME), checked by huggingface_hub's own rules before anything is written."""
    try:
        validate_repo_id(text)
    except HFValidationError as e:
        raise argparse.ArgumentTypeError(f"not a Hub repo id, USER/NAME ({str(e).splitlines()[0][:200]})") from None
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a checkpoint of ours (.safetensors with its JSON)")
    p.add_argument("--out", type=writable("folder"), required=True, help="folder to write the export into")
    p.add_argument("--push", type=_repo_id, default=None, metavar="USER/NAME",
                   help="then upload the files this export wrote (and nothing else in --out) to this Hub repo")
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
            url = push(args.out, args.push, done["files"], args.private)
        except Exception as e:  # no token, no network, no rights: the client's own words, never the token
            print(f"export: --push {args.push} failed ({type(e).__name__}: {str(e).splitlines()[0][:300]})",
                  file=sys.stderr)
            return 1
        print(f"pushed to {url}; load it with timm.create_model('hf-hub:{args.push}', pretrained=True)"
              if done["format"] == "timm" else f"pushed to {url}")
    return 0
