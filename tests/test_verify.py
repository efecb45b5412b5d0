"""Equivalence with timm and torchvision: logits (eval and train mode) and every gradient, to 1e-5."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from resnet_lab import build
from resnet_lab.__main__ import main
from resnet_lab.models.verify import TOLERANCE, compare, randomize_bn, reference_model, twin_nets, verify_arch

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


@pytest.mark.parametrize("reference", ["timm", "torchvision"])
@pytest.mark.parametrize("arch", ARCHS)
def test_equivalent_to_reference(arch, reference):
    r = verify_arch(arch, reference, image_size=64, batch=2)
    assert r.params_ours == r.params_ref
    assert r.diffs["eval_logits"] <= TOLERANCE
    assert r.diffs["train_logits"] <= TOLERANCE
    assert r.diffs["grads"] <= TOLERANCE
    assert r.ok


def test_comparison_catches_a_wrong_branch():
    """With randomized BN a single perturbed BN deep in a branch must be visible (timm's zero-gamma would hide it)."""
    torch.manual_seed(0)
    ref = reference_model("resnet18")
    randomize_bn(ref)
    ours = build("resnet18")
    ours.load_state_dict(ref.state_dict())
    with torch.no_grad():
        ours.layer3[1].bn2.weight.mul_(1.01)
    d = compare(ours, ref, torch.randn(2, 3, 64, 64))
    assert d["eval_logits"] > 10 * TOLERANCE
    assert d["train_logits"] > 10 * TOLERANCE
    assert d["grads"] > 10 * TOLERANCE


@pytest.mark.parametrize("ignored", ["weight", "bias", "running_mean", "running_var"])
def test_a_net_whose_bn_ignores_one_of_its_tensors_is_a_mismatch(ignored):
    """Each of BN's four tensors is randomized, so a net of ours whose BN uses the default in its place (1 for the
    weight and the variance, 0 for the bias and the mean) differs from the reference: left at its default, that
    tensor's use would go unchecked. The eval logits use all four; train mode the affine two."""
    ours, ref = twin_nets("resnet18")
    defaults = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}

    def forward(bn: torch.nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
        t = {k: getattr(bn, k) for k in defaults}
        t[ignored] = t[ignored] * 0 + defaults[ignored]  # still in the graph: a gradient (of zeros) to compare
        return F.batch_norm(x, t["running_mean"], t["running_var"], t["weight"], t["bias"],
                            bn.training, 0.0, bn.eps)  # momentum 0: train mode leaves the statistics alone

    for m in ours.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.forward = functools.partial(forward, m)
    d = compare(ours, ref, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert d["eval_logits"] > 100 * TOLERANCE, d
    if ignored in ("weight", "bias"):
        assert d["train_logits"] > 100 * TOLERANCE, d


def test_timm_default_init_would_hide_a_missing_branch():
    """Why randomize_bn exists: with timm's zero-init last BN, dropping the branch changes nothing."""
    torch.manual_seed(0)
    ref = reference_model("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = ref(x)
        for blk in [ref.layer2[1], ref.layer3[1]]:
            blk.conv2.weight.mul_(-3.0)
        after = ref(x)
    assert torch.allclose(before, after)


def test_cli_prints_a_table_and_exits_zero(capsys):
    assert main(["verify", "--arch", "resnet18", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "torchvision" in out and "OK" in out and "MISMATCH" not in out


def test_cli_defaults_cover_the_five_imagenet_nets():
    import argparse

    from resnet_lab.cli import verify

    p = argparse.ArgumentParser()
    verify.add_arguments(p)
    args = p.parse_args([])
    assert args.arch == ARCHS and args.reference == ["timm", "torchvision"]


def test_weights_come_from_the_seed_not_the_global_rng():
    """A thread reseeding torch's global RNG changes nothing, and verify never reseeds it for everyone else."""
    import threading

    stop = threading.Event()

    def hammer() -> None:
        k = 0
        while not stop.is_set():
            torch.manual_seed(k)
            torch.rand(64)
            k += 1

    first = twin_nets("resnet18", seed=3)[0].state_dict()
    t = threading.Thread(target=hammer)
    t.start()
    try:
        ours, ref = twin_nets("resnet18", seed=3)
    finally:
        stop.set()
        t.join()
    assert all(torch.equal(v, first[k]) for k, v in ours.state_dict().items())
    assert all(torch.equal(v, first[k]) for k, v in ref.state_dict().items())
    assert not torch.equal(twin_nets("resnet18", seed=4)[0].layer1[0].bn1.weight, first["layer1.0.bn1.weight"])
    after = []
    for prior in (1, 2):  # old behaviour: torch.manual_seed(seed) inside, so both would continue identically
        torch.manual_seed(prior)
        verify_arch("resnet18", image_size=32, batch=2)
        after.append(torch.rand(4))
    assert not torch.equal(*after)


@pytest.mark.parametrize("tag, says", [("resnet50.bamboo", "no classifier head"),
                                       ("resnet18.tv_in1k", "HF_HUB_OFFLINE is set"),
                                       ("resnet18.no_such_tag", "no hub weights")])
def test_cli_pretrained_that_cannot_be_had_is_a_message_not_a_traceback(capsys, tag, says):
    assert main(["verify", "--pretrained", tag]) == 2
    err = capsys.readouterr().err
    assert err.startswith("verify: ") and says in err and tag in err and "Traceback" not in err
