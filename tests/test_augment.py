"""Augmentation: timm's options and meanings through timm's factory, defaults that suit small images, batch mixing
from the run's own generator, and options refused where they cannot act."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from resnet_lab.__main__ import main
from resnet_lab.data.loaders import pad_crop_flip
from resnet_lab.training import augment as A
from resnet_lab.training.train import TrainConfig, train

CFG = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3, "crop_pct": 1.0, "interpolation": "bilinear"}


def _names(tf) -> list[str]:
    return [type(t).__name__ for t in tf.transforms]


def test_small_images_get_the_cifar_recipe_large_ones_timms_and_options_mean_what_timm_says():
    small = A.train_transform(CFG)
    assert _names(small)[:4] == ["Resize", "CenterCrop", "RandomCrop", "RandomResizedCropAndInterpolation"]
    crop = small.transforms[2]  # after the eval transform's shape: shorter side to 32, centre crop
    assert crop.padding == 4 and small.transforms[3].scale == (1.0, 1.0)  # timm's crop made a no-op resize
    large = A.train_transform({**CFG, "input_size": (3, 96, 96)})
    assert _names(large)[:2] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip"]
    assert large.transforms[0].scale == (0.08, 1.0)
    chosen = A.train_transform(CFG, A.Augment(hflip=0.0, scale=(0.5, 1.0), ratio=(0.9, 1.1), aa="rand-m9-mstd0.5",
                                              reprob=0.25))
    names = _names(chosen)
    assert names[0] == "RandomResizedCropAndInterpolation" and chosen.transforms[0].scale == (0.5, 1.0)
    assert chosen.transforms[0].ratio == (0.9, 1.1) and "RandomHorizontalFlip" not in names
    assert "RandAugment" in names and "RandomErasing" in names
    from PIL import Image

    assert chosen(Image.new("RGB", (40, 30))).shape == (3, 32, 32)


def test_flip_probability_reaches_the_tensor_augmentations():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4).repeat(50, 1, 1, 1)
    _, _, flipped = pad_crop_flip(x, g, pad=0, hflip=0.0)
    assert not flipped.any()
    _, _, flipped = pad_crop_flip(x, g, pad=0, hflip=1.0)
    assert flipped.all()
    default = pad_crop_flip(x, torch.Generator().manual_seed(3))  # the default draws what it always drew
    assert torch.equal(default[2], torch.rand(len(x), generator=_after_offsets(len(x))) < 0.5)


def _after_offsets(n: int) -> torch.Generator:
    g = torch.Generator().manual_seed(3)
    torch.randint(0, 9, (n, 2), generator=g)
    return g


def test_mixing_is_timms_definition_and_repeats_from_the_generator():
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    aug = A.Augment(mixup=0.4, cutmix=1.0, smoothing=0.1)
    a = A.mix_batch(x, y, 4, aug, torch.Generator().manual_seed(5))
    b = A.mix_batch(x, y, 4, aug, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # the generator decides everything
    assert torch.allclose(a[1].sum(1), torch.ones(6))
    # the soft targets: smoothed one-hot (timm's mixup_target), y mixed with y reversed by lambda
    t = A.soft_targets(y, 4, 0.1, lam=0.7)
    one = torch.full((6, 4), 0.1 / 4)
    one[torch.arange(6), y] = 0.9 + 0.1 / 4
    assert torch.allclose(t, 0.7 * one + 0.3 * one.flip(0))
    # cutmix's lambda is the true share of pixels kept
    cut = A.mix_batch(x, y, 4, A.Augment(cutmix=1.0), torch.Generator().manual_seed(2))
    kept = (cut[0] == x).all(1).float().mean((1, 2))  # per image: pixels not pasted from its partner
    assert 0 < kept[0] < 1 and cut[1][0, 0].item() == pytest.approx(kept[0].item(), abs=1e-6)  # y[0]=0, y[5]=1
    # without mixing: plain cross-entropy with torch's label smoothing
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(4))
    loss, out = A.loss_fn(A.Augment(smoothing=0.1), 4, torch.Generator())(lambda z: logits, x, y)
    assert out is logits and loss == F.cross_entropy(logits, y, label_smoothing=0.1)


@pytest.mark.parametrize("args, message", [
    (["--aa", "rand-m9"], "--aa act on images, so only on folder:PATH data"),
    (["--scale", "0.5", "1", "--data", "cifar10"], "--scale act on images"),
    (["--hflip", "1.5"], "argument --hflip: must be a finite number from 0 to 1 (got 1.5)"),
    (["--mixup", "nan"], "argument --mixup: must be a finite number >= 0 (got nan)"),
    (["--scale", "0.5", "2", "--data", "folder:x"], "--scale 0.5 2.0 (an area share: at most 1)"),
])
def test_options_that_cannot_act_are_refused_with_the_reason(args, message, capsys):
    assert main(["train", *args, "--quiet", "--device", "cpu"]) == 2
    assert message in capsys.readouterr().err


def test_a_run_records_its_augmentation(tmp_path, one_thread):
    r = train(TrainConfig.from_options(n_train=64, n_val=32, n_test=32, batch_size=32, epochs=1, quiet=True, mixup=0.2,
                                       smoothing=0.1, hflip=0.0, out=str(tmp_path / "m")))
    aug = json.loads(r.path.with_suffix(".json").read_text())["augment"]
    assert (aug["mixup"], aug["smoothing"], aug["hflip"], aug["recipe"]) == (0.2, 0.1, 0.0, "flips on both axes")
    assert "--mixup 0.2" in r.meta["command_full"] and "--hflip 0.0" in r.meta["command_full"]


@pytest.mark.filterwarnings("ignore:skipped")
def test_a_small_folder_is_decoded_once_and_trained_from_memory_as_the_app_sees_it(tmp_path, one_thread):
    """Auto for 32 px: decoded once (a corrupt file listed), held as uint8 and augmented on the device; the
    validation images are exactly what the eval transform (the app's) gives, to float rounding."""
    import numpy as np
    from PIL import Image
    from test_datasets import write_folder

    from resnet_lab.data.images import decode_image, eval_transform, resize_side
    from resnet_lab.training.run_data import make_data

    bad = write_folder(tmp_path / "imgs", {"a": 10, "b": 10})
    wide = tmp_path / "imgs" / "b" / "wide.png"  # not square: resized by its shorter side and centre-cropped
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 90, 3), dtype=np.uint8)).save(wide)
    config = TrainConfig(data=f"folder:{tmp_path / 'imgs'}", batch_size=4, workers=0, val_fraction=0.3)
    data = make_data(config, CFG, torch.device("cpu"), torch.Generator().manual_seed(0), lambda s: None)
    assert data.record["in_memory"] and {s["path"] for s in data.record["skipped"]} == {str(p) for p in bad}
    assert type(data.train).__name__ == "TensorBatches" and data.train.pad == 4
    val = data.val
    tf = eval_transform(CFG)
    want = torch.stack([tf(decode_image(p, min_side=resize_side(CFG))) for p, _ in _val_samples(tmp_path, config)])
    got = torch.cat([x for x, _ in val])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    off = make_data(TrainConfig.from_options(config.options(), folder_cache="off"), CFG, torch.device("cpu"),
                    torch.Generator().manual_seed(0), lambda s: None)
    assert not off.record["in_memory"] and type(off.train).__name__ == "LoaderBatches"
    with pytest.raises(ValueError, match="--folder-cache on does not keep"):
        TrainConfig.from_options(data="folder:x", aa="rand-m9", folder_cache="on")


def _val_samples(tmp_path, config):
    import warnings

    from resnet_lab.data.folders import image_folder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return image_folder(tmp_path / "imgs", config.val_fraction, config.seed).val.samples
