"""Shapes: deterministic pixels, ground truth that agrees with them, balanced classes, honest constants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resnet_lab.data.shapes import CLASSES, MEAN, STD, ShapesDataset, _draw_clutter, normalize, render


@pytest.fixture(scope="module")
def shapes() -> ShapesDataset:
    return ShapesDataset(96, seed=5)


def test_same_seed_same_pixels_whatever_n_or_order(shapes):
    again = ShapesDataset(40, seed=5)
    assert torch.equal(again.images, shapes.images[:40])
    assert torch.equal(again.masks, shapes.masks[:40])
    assert torch.equal(again.boxes, shapes.boxes[:40])
    for i in (77, 3, 50):  # any single sample, rendered alone, in any order
        img, label, mask, box = render(5, i)
        assert torch.equal(torch.from_numpy(img), shapes.images[i]) and label == shapes.labels[i]
        assert torch.equal(torch.from_numpy(mask), shapes.masks[i]) and box == shapes.sample(i).box


def test_different_seed_different_pixels(shapes):
    other = ShapesDataset(40, seed=6)
    differs = (other.images != shapes.images[:40]).flatten(1).float().mean(1)
    assert bool((differs > 0.5).all())


@pytest.mark.parametrize("size", [32, 48, 64])
def test_items_are_unnormalized_float_images(size):
    ds = ShapesDataset(8, seed=1, size=size, clutter=size != 48)
    x, y = ds[3]
    assert x.dtype == torch.float32 and x.shape == (3, size, size)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.05
    s = ds.sample(3)
    assert torch.equal(s.image, x) and s.label == y == int(ds.labels[3]) and CLASSES[y]
    assert s.mask.dtype == torch.bool and s.mask.shape == (size, size)


def test_box_is_tight_around_the_mask(shapes):
    for i in range(len(shapes)):
        s = shapes.sample(i)
        x0, y0, x1, y1 = s.box
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
        inside = s.mask[y0:y1, x0:x1]
        assert int(inside.sum()) == int(s.mask.sum()) > 20  # nothing outside the box
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()  # tight


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    return torch.nn.functional.max_pool2d(mask[None, None].float(), 2 * r + 1, 1, r)[0, 0].bool()


def test_mask_marks_pixels_that_differ_from_the_background_around_them(shapes):
    for i in range(len(shapes)):
        s = shapes.sample(i)
        band = _dilate(s.mask, 3) & ~_dilate(s.mask, 1)  # background just around the target
        inside = s.image[:, s.mask].mean(1)
        around = s.image[:, band].mean(1)
        assert float((inside - around).norm()) > 0.2, i


def test_mask_is_the_drawn_shape_not_a_guess():
    """Shifting the mask by a few pixels must make it fit the image worse: the mask is where the colour is."""
    ds = ShapesDataset(24, seed=9, clutter=False)
    for i in range(len(ds)):
        s = ds.sample(i)
        colour = s.image[:, s.mask].mean(1, keepdim=True)
        spread = (s.image[:, s.mask] - colour).norm(dim=0).mean()
        gained = s.mask.roll(3, 1) & ~s.mask  # what a mask shifted 3 px right would wrongly claim
        assert spread < 0.2 < (s.image[:, gained] - colour).norm(dim=0).mean()


def test_clutter_stays_out_of_the_target_box():
    bg = np.full((32, 32, 3), 128 / 255, np.float32)  # survives the 8-bit round trip
    drawn = 0
    for k in range(60):
        rng = np.random.default_rng(k)
        box = tuple(int(v) for v in (*rng.integers(0, 14, 2), *rng.integers(18, 33, 2)))
        out = _draw_clutter(bg, box, rng)
        changed = np.abs(out - bg).sum(-1) > 1e-3
        x0, y0, x1, y1 = box
        assert not changed[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1].any()
        drawn += bool(changed.any())
    assert drawn > 20  # and there is clutter to keep out


@pytest.mark.parametrize("n", [8, 50, 203])
def test_classes_are_balanced(n):
    counts = torch.bincount(ShapesDataset(n, seed=2).labels, minlength=len(CLASSES))
    assert int(counts.max() - counts.min()) <= 1 and int(counts.sum()) == n


def test_mean_and_std_are_the_data_statistics():
    x = ShapesDataset(2000, seed=3).images.float() / 255
    assert torch.allclose(x.mean((0, 2, 3)), torch.tensor(MEAN), atol=0.01)
    assert torch.allclose(x.std((0, 2, 3)), torch.tensor(STD), atol=0.01)
    z = normalize(x[:64])
    assert abs(float(z.mean())) < 0.2 and 0.8 < float(z.std()) < 1.2
    assert torch.allclose(normalize(torch.tensor(MEAN).view(3, 1, 1).expand(3, 4, 4)), torch.zeros(3, 4, 4))
