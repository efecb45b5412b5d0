"""finetune.py: pretrained weights in, a seeded new head, a frozen prefix whose BatchNorm does not drift, per-part lrs.

Everything runs on CPU without network, on resnet20 (16 px) and resnet18 (32 px) checkpoints written here.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torch.nn.functional as F

from resnet_lab.models.resnet import build
from resnet_lab.models.weights import WeightsUnavailable, save_checkpoint
from resnet_lab.training import finetune
from resnet_lab.training.finetune import arch_parts, data_config, freeze, param_groups, parts, pretrained_model

SOURCE_CLASSES = ["a", "b", "c"]
SOURCE_MEAN, SOURCE_STD = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]


def _with_stats(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine weights, so "unchanged" and "loaded" mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    return model


def _checkpoint(tmp_path, arch: str = "resnet20", classes=SOURCE_CLASSES, json: bool = True, name: str = "src"):
    model = _with_stats(build(arch, num_classes=len(classes), seed=7), seed=8)
    meta = {"arch": arch, "num_classes": len(classes), "classes": list(classes), "input_size": [3, 16, 16],
            "mean": SOURCE_MEAN, "std": SOURCE_STD, "crop_pct": 1.0, "interpolation": "bicubic"}
    path = save_checkpoint(model, tmp_path / name, meta)
    if not json:
        path.with_suffix(".json").unlink()
    return path, model


@pytest.fixture
def source(tmp_path):
    return _checkpoint(tmp_path)


def test_backbone_loads_exactly_head_is_new_and_drawn_from_the_seed_without_the_global_rng(source):
    path, src = source
    rng = torch.get_rng_state()
    start = pretrained_model(str(path), "resnet20", ["cat", "dog"], seed=3)
    again = pretrained_model(str(path), "resnet20", ["cat", "dog"], seed=3)
    other = pretrained_model(str(path), "resnet20", ["cat", "dog"], seed=4)
    assert torch.equal(torch.get_rng_state(), rng)  # the head came from its own generator
    model, want = start.model, src.state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, want[k]), k
    assert model.fc.out_features == 2 and model.num_classes == 2 and start.head == "new"
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 2)
    assert torch.equal(model.fc.weight, again.model.fc.weight) and torch.equal(model.fc.bias, again.model.fc.bias)
    assert not torch.equal(model.fc.weight, other.model.fc.weight)
    cfg = model.pretrained_cfg  # the weights' data config, for the folder transforms
    assert list(cfg["mean"]) == SOURCE_MEAN and list(cfg["std"]) == SOURCE_STD
    assert cfg["interpolation"] == "bicubic" and cfg["num_classes"] == 2
    assert start.record()["pretrained_classes"] == SOURCE_CLASSES and start.pretrained_num_classes == 3


def test_head_kept_when_the_classes_are_the_same_reordered_when_only_their_order_differs(source):
    path, src = source
    same = pretrained_model(str(path), "resnet20", SOURCE_CLASSES, seed=3)
    assert same.head == "kept" and torch.equal(same.model.fc.weight, src.fc.weight)
    shuffled = pretrained_model(str(path), "resnet20", ["c", "a", "b"], seed=3)
    assert shuffled.head == "kept, rows reordered"
    assert torch.equal(shuffled.model.fc.weight, src.fc.weight[[2, 0, 1]])
    assert torch.equal(shuffled.model.fc.bias, src.fc.bias[[2, 0, 1]])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # the same net, its outputs permuted: "c" is still "c"
        assert torch.equal(shuffled.model.eval()(x), src.eval()(x)[:, [2, 0, 1]])
    assert pretrained_model(str(path), "resnet20", ["a", "b", "x"], seed=3).head == "new"


def _step(model: torch.nn.Module, groups: list[dict], seed: int = 0) -> None:
    """One SGD step on a tiny batch, in train mode as the loop runs it."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 3, 16, 16, generator=g) * 2 + 1, torch.randint(0, 2, (8,), generator=g)
    opt = torch.optim.SGD(groups, momentum=0.9)
    model.train()  # as each epoch starts: it must not wake the frozen BatchNorms
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_freeze_layer2_keeps_weights_and_batchnorm_statistics_bit_for_bit(source):
    path, _ = source
    model = pretrained_model(str(path), "resnet20", ["cat", "dog"], seed=3).model
    frozen = freeze(model, "layer2")
    assert frozen and all(n.split(".")[0] in ("conv1", "bn1", "layer1", "layer2") for n in frozen)
    for name, p in model.named_parameters():
        assert p.requires_grad == (name.split(".")[0] in ("layer3", "fc")), name
    copied = copy.deepcopy(model)  # deepcopy keeps the hooks: a copy made for DDP/compile stays frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, param_groups(model, 0.1, 0.1, 5e-4))
    _step(model, param_groups(model, 0.1, 0.1, 5e-4), seed=1)  # a second epoch's model.train() too
    after = model.state_dict()
    for k, v in after.items():
        if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2"):
            assert torch.equal(v, before[k]), f"frozen {k} changed"
    for k in ("fc.weight", "fc.bias", "layer3.0.conv1.weight", "layer3.0.bn1.weight", "layer3.0.bn1.running_mean",
              "layer3.2.bn2.running_var", "layer3.2.bn2.num_batches_tracked"):
        assert not torch.equal(after[k], before[k]), f"trainable {k} did not change"
    with torch.no_grad():  # and the copy, through its own hooks, is frozen as well
        copied.train()(torch.randn(4, 3, 16, 16))
    assert torch.equal(copied.state_dict()["layer1.0.bn1.running_mean"], before["layer1.0.bn1.running_mean"])


def test_without_the_eval_hook_frozen_batchnorm_statistics_drift(source, monkeypatch):
    """What the hook prevents: requires_grad=False alone leaves a frozen BN updating its running statistics."""
    path, _ = source
    model = pretrained_model(str(path), "resnet20", ["cat", "dog"], seed=3).model
    monkeypatch.setattr(finetune.KeepEval, "__call__", lambda self, model, args: None)
    freeze(model, "layer2")
    before = model.layer1[0].bn1.running_mean.clone()
    _step(model, param_groups(model, 0.1, 0.1, 5e-4))
    assert not torch.equal(model.layer1[0].bn1.running_mean, before)
    assert not model.layer1[0].conv1.weight.requires_grad


def test_frozen_batchnorm_stays_frozen_when_ddp_swaps_the_batchnorm_modules(source):
    """`distributed.wrap(sync_bn=True)` replaces each BatchNorm by a new module sharing its tensors, after freeze."""
    from resnet_lab.runtime.distributed import _swap_batchnorm

    class Swapped(torch.nn.BatchNorm2d):  # stands in for SyncBatchNorm, which needs a process group to train
        pass

    path, _ = source
    model = pretrained_model(str(path), "resnet20", ["cat", "dog"], seed=3).model
    freeze(model, "layer2")
    _swap_batchnorm(model, (torch.nn.BatchNorm2d,), Swapped)
    assert type(model.layer1[0].bn1) is Swapped and type(model.bn1) is Swapped
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, param_groups(model, 0.1, 0.1, 5e-4))
    after = model.state_dict()
    for k in ("bn1.running_mean", "layer1.0.bn1.running_var", "layer2.2.bn2.running_mean"):
        assert torch.equal(after[k], before[k]), k
    assert not torch.equal(after["layer3.0.bn1.running_mean"], before["layer3.0.bn1.running_mean"])


def test_freeze_parts_follow_the_arch_and_bad_parts_are_refused_by_name():
    cifar, imagenet = build("resnet20", seed=0), build("resnet18", num_classes=2, seed=0)
    assert parts(cifar) == ["nothing", "stem", "layer1", "layer2", "layer3"]
    assert parts(imagenet)[-1] == "layer4"
    assert all(arch_parts(a) == parts(build(a, seed=0)) for a in ("resnet20", "resnet18", "plain18_cifar"))
    assert freeze(build("resnet20", seed=0), "nothing") == []
    assert freeze(build("resnet20", seed=0), "stem") == ["conv1.weight", "bn1.weight", "bn1.bias"]
    everything = freeze(imagenet, "layer4")
    assert all(not n.startswith("fc.") for n in everything)
    assert [n for n, p in imagenet.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    with pytest.raises(ValueError, match="choose one of nothing, stem, layer1, layer2, layer3$"):
        freeze(cifar, "layer4")
    with pytest.raises(ValueError, match="'fc'"):
        freeze(cifar, "fc")


def test_param_groups_rates_decay_disjoint_and_frozen_left_out():
    model = build("resnet20", num_classes=2, seed=0)
    frozen = set(freeze(model, "layer1"))
    groups = param_groups(model, 0.01, 0.1, 5e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    seen: list[str] = []
    for g in groups:
        head = g["name"].startswith("fc")
        assert g["lr"] == pytest.approx(0.01 if head else 0.001)
        for p in g["params"]:
            n = names[id(p)]
            seen.append(n)
            assert n.startswith("fc.") == head
            assert g["weight_decay"] == (5e-4 if p.ndim > 1 else 0.0), n
    assert len(seen) == len(set(seen))  # no parameter in two groups
    assert set(seen) == {n for n, p in model.named_parameters() if p.requires_grad} and not frozen & set(seen)
    assert {g["name"] for g in groups} == {"fc", "fc (no decay)", "backbone", "backbone (no decay)"}
    with pytest.raises(ValueError, match="backbone-lr-scale"):
        param_groups(model, 0.01, -1.0, 0.0)


def test_onecycle_keeps_the_backbone_ratio_only_with_per_group_max_lr():
    """For the loop's wiring: OneCycleLR with a scalar max_lr gives the backbone the head's rate."""
    model = build("resnet20", num_classes=2, seed=0)

    def ratios(max_lr) -> set[float]:
        opt = torch.optim.SGD(param_groups(model, 0.1, 0.1, 0.0), momentum=0.9)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr(opt), total_steps=10, pct_start=0.3)
        out = set()
        for _ in range(9):
            opt.step()
            sched.step()
            lrs = {g["name"]: g["lr"] for g in opt.param_groups}
            out.add(round(lrs["backbone"] / lrs["fc"], 6))
        return out

    assert ratios(lambda opt: [g["lr"] for g in opt.param_groups]) == {0.1}
    assert ratios(lambda opt: 0.1) == {1.0}


def test_arch_mismatch_and_missing_file_give_clear_errors(tmp_path, source):
    path, _ = source
    with pytest.raises(WeightsUnavailable, match="holds a resnet20, not a resnet32; pass --arch resnet20"):
        pretrained_model(str(path), "resnet32", ["x", "y"], seed=0)
    with pytest.raises(WeightsUnavailable, match="holds a resnet20, not a plain20"):  # same keys, other net
        pretrained_model(str(path), "plain20", ["x", "y"], seed=0)
    bare, _ = _checkpoint(tmp_path, json=False, name="bare")  # no JSON: must fit the arch asked for
    with pytest.raises(WeightsUnavailable, match="bare.safetensors cannot start a resnet32: .*does not fit"):
        pretrained_model(str(bare), "resnet32", ["x", "y"], seed=0)
    assert pretrained_model(str(bare), "resnet20", ["x", "y"], seed=0).head == "new"
    with pytest.raises(WeightsUnavailable, match="nope.safetensors: weights file not found") as e:
        pretrained_model(str(tmp_path / "nope.safetensors"), "resnet20", ["x", "y"], seed=0)
    assert str(tmp_path) not in str(e.value)  # no server path in a message


def test_hub_tags_offline_fail_fast_and_a_wrong_arch_is_said_before_any_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="are a resnet50, not a resnet18; pass --arch resnet50"):
        pretrained_model("resnet50.a1_in1k", "resnet18", ["cat", "dog"], seed=0)
    t = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as e:
        pretrained_model("resnet18.a1_in1k", "resnet18", ["cat", "dog"], seed=0)
    assert time.perf_counter() - t < 5
    assert "resnet18.a1_in1k" in str(e.value) and "HF_HUB_OFFLINE" in str(e.value) and ".safetensors" in str(e.value)


def test_data_config_takes_the_run_size_and_drops_timms_test_size():
    timm_cfg = {"input_size": (3, 224, 224), "test_input_size": (3, 288, 288), "test_crop_pct": 1.0,
                "crop_pct": 0.95, "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.25,) * 3}
    cfg = data_config(timm_cfg, 64)
    assert cfg["input_size"] == (3, 64, 64) and "test_input_size" not in cfg and "test_crop_pct" not in cfg
    assert cfg["crop_pct"] == 0.95 and cfg["interpolation"] == "bicubic"
    assert data_config(timm_cfg, None)["input_size"] == (3, 224, 224)
