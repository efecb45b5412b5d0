"""What a finished Playground run leaves: its curves (CSV) and both trained nets, loadable anywhere and offered in
this session's pickers only (`session_nets`)."""

from __future__ import annotations

from dataclasses import asdict

from ..data.heldout import VAL_SEED_OFFSET
from ..data.shapes import CLASSES, shapes_data_config
from ..data.zipdata import ZipImages
from ..models.checkpoints import save_checkpoint
from ..research import playground as pg
from . import session_nets
from .common import tmp_file, zoo


def save(watch: pg.LiveWatch, cfg: pg.PlaygroundConfig, images: ZipImages | None = None,
         zip_name: str = "") -> tuple[list[str], str]:
    """The run's curves (CSV) and both trained nets (`.safetensors` + JSON, loadable by `load_checkpoint`), the
    nets registered as this session's own (`session_nets`); the files and the run's token."""
    snap = watch.snapshot()
    csv = tmp_file(".csv", name="playground_curves.csv")
    snap.curves.to_csv(csv, index=False)
    files, token = [str(csv)], session_nets.new_token()
    if images is None:
        data = {"name": "shapes", "clutter": False, "train_seed": cfg.seed,
                "test_seed": cfg.seed + VAL_SEED_OFFSET, "n_train": cfg.steps * cfg.batch_size}
        meta = {"classes": list(CLASSES), **shapes_data_config(cfg.image_size)}
    else:
        data = images.record(zip_name)
        meta = {"classes": images.classes, **shapes_data_config(cfg.image_size), "mean": list(images.mean),
                "std": list(images.std)}
    for arch in cfg.archs:
        net = watch.nets.get(pg.net_label(arch))
        if net is None:
            continue
        meta.update({"arch": arch, "num_classes": len(meta["classes"]), "norm": "bn" if cfg.batchnorm else "none",
                     "data": data, "playground": asdict(cfg), "steps_trained": snap.step})
        path = save_checkpoint(net.cpu().eval(), csv.parent / session_nets.stem(token, arch), meta)
        zoo().add_private(path)
        files += [str(path), str(path.with_suffix(".json"))]
    return files, token
