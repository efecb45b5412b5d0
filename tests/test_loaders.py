"""Data to batches: the on-device CIFAR augmentation against an independent formula, normalization, epoch order,
the stratified validation split, and Shapes' batches as they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resnet_lab.data.loaders import ShapesBatches, TensorBatches, pad_crop_flip, per_rank_batch, stratified_indices
from resnet_lab.data.shapes import ShapesDataset, normalize

CPU = torch.device("cpu")


def _coordinates(b: int, h: int = 32, w: int = 32) -> torch.Tensor:
    """Images whose pixels say where they are: channel 0 = row + 1, channel 1 = column + 1, channel 2 = image + 1
    (0 only in the zero padding), so any crop and flip can be read back off the output."""
    rows, cols = torch.meshgrid(torch.arange(h) + 1.0, torch.arange(w) + 1.0, indexing="ij")
    return torch.stack([torch.stack([rows, cols, torch.full((h, w), i + 1.0)]) for i in range(b)])


def _reference(img: np.ndarray, top: int, left: int, flip: bool, pad: int = 4) -> np.ndarray:
    """pad-crop-flip written out with numpy slicing, as torchvision's RandomCrop(32, 4) + RandomHorizontalFlip."""
    h, w = img.shape[1:]
    out = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))[:, top:top + h, left:left + w]
    return out[:, :, ::-1] if flip else out


def test_pad_crop_flip_matches_an_independent_formula_and_its_draws_are_recovered():
    x = _coordinates(64)
    out, offsets, flipped = pad_crop_flip(x, torch.Generator().manual_seed(5))
    assert out.shape == x.shape
    for b in range(len(x)):
        img, got = x[b].numpy(), out[b].numpy()
        matches = [(t, s, f) for t in range(9) for s in range(9) for f in (False, True)
                   if np.array_equal(_reference(img, t, s, f), got)]
        assert matches == [(int(offsets[b, 0]), int(offsets[b, 1]), bool(flipped[b]))]  # exactly one, the drawn one
    assert 0 < int(flipped.sum()) < len(x)  # both flipped and unflipped images in one batch
    assert len(set(offsets[:, 0].tolist())) > 4 and len(set(offsets[:, 1].tolist())) > 4
    assert offsets.min() >= 0 and offsets.max() <= 8  # pad 4: offsets 0..8 into the 40 px padded image
    again = pad_crop_flip(x, torch.Generator().manual_seed(5))
    other = pad_crop_flip(x, torch.Generator().manual_seed(6))
    assert torch.equal(again[0], out) and not torch.equal(other[0], out)


def test_tensor_batches_normalize_with_the_given_mean_std_and_keep_order_for_eval():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=g)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    batches = TensorBatches(images, torch.arange(10), mean, std, 4, CPU)
    got = list(batches)
    assert len(batches) == len(got) == 3 and [len(y) for _, y in got] == [4, 4, 2]
    x = torch.cat([b[0] for b in got])
    expected = (images.double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1)) / torch.tensor(std).double().view(
        1, 3, 1, 1)
    assert torch.allclose(x.double(), expected, atol=1e-5) and torch.equal(torch.cat([b[1] for b in got]),
                                                                           torch.arange(10))


def test_tensor_batches_train_epoch_is_a_seeded_permutation_with_full_batches_only():
    images = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)

    def epoch(seed: int) -> list[int]:
        b = TensorBatches(images, torch.arange(10), (0.5,) * 3, (0.5,) * 3, 4, CPU, torch.Generator().manual_seed(seed),
                          train=True, channels_last=True)
        out = list(b)
        assert len(b) == len(out) == 2 and all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in out)
        return torch.cat([y for _, y in out]).tolist()

    first = epoch(1)
    assert len(set(first)) == 8 and first == epoch(1) and first != epoch(2)


def test_stratified_indices_are_per_class_disjoint_and_seeded():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    tr, va = stratified_indices(labels, 3, 0.1, seed=0)
    assert sorted(tr.tolist() + va.tolist()) == list(range(100))
    assert torch.bincount(labels[va], minlength=3).tolist() == [5, 3, 2]
    assert torch.equal(va, stratified_indices(labels, 3, 0.1, seed=0)[1])
    assert not torch.equal(va, stratified_indices(labels, 3, 0.1, seed=1)[1])


def test_shapes_batches_are_the_old_loader_with_flips_from_the_same_generator():
    """The loop the shipped model was trained with, written out: DataLoader(shuffle, generator) then flips from
    that generator, normalized. ShapesBatches must give the same tensors in the same order."""
    ds = ShapesDataset(64, seed=2, size=32)
    g_old = torch.Generator().manual_seed(7)
    old = []
    for x, y in torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, drop_last=True, generator=g_old):
        h, v = torch.rand(2, len(x), 1, 1, 1, generator=g_old) < 0.5
        x = torch.where(h, x.flip(-1), x)
        old.append((normalize(torch.where(v, x.flip(-2), x)), y))
    new = list(ShapesBatches(ds, 16, CPU, torch.Generator().manual_seed(7), train=True))
    assert len(new) == len(old) == 4
    for (a, ya), (b, yb) in zip(old, new):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_a_training_tensor_batches_needs_a_generator():
    with pytest.raises(ValueError, match="Generator"):
        TensorBatches(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2), (0.5,), (0.5,), 1, CPU, train=True)


def test_a_global_batch_that_does_not_divide_over_the_processes_is_refused_with_a_fix():
    from resnet_lab.runtime.distributed import Dist

    assert per_rank_batch(16, Dist(world_size=4)) == 4 and per_rank_batch(16, Dist()) == 16
    with pytest.raises(ValueError, match=r"--batch-size 10 is the global batch .* 3 processes \(try 9\)"):
        TensorBatches(torch.zeros(12, 3, 4, 4, dtype=torch.uint8), torch.zeros(12), (0.5,), (0.5,), 10, CPU,
                      torch.Generator(), train=True, dist=Dist(rank=1, world_size=3))
