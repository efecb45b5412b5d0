"""The family: parameter counts, depths, plain twins, shared init, features API."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import resnet_lab
from resnet_lab.models.blocks import ShortcutA

TIMM_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
               "resnet101": 44_549_160, "resnet152": 60_192_808}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch", list(TIMM_PARAMS))
def test_params_and_keys_match_timm_and_torchvision(arch):
    ours = resnet_lab.build(arch)
    assert n_params(ours) == TIMM_PARAMS[arch]
    ref = timm.create_model(arch)
    assert n_params(ref) == TIMM_PARAMS[arch]
    assert list(ours.state_dict()) == list(ref.state_dict())
    tv = getattr(torchvision.models, arch)().state_dict()
    result = ours.load_state_dict(tv, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    loaded = ours.state_dict()
    assert loaded.keys() == tv.keys()
    for k, v in tv.items():  # the weights really arrived (ours were a different random init)
        assert torch.equal(loaded[k], v), k


@pytest.mark.parametrize("arch,depth,params", [("resnet20", 20, 0.27e6), ("resnet32", 32, 0.46e6),
                                               ("resnet44", 44, 0.66e6), ("resnet56", 56, 0.85e6),
                                               ("resnet110", 110, 1.7e6)])
def test_cifar_depth_and_params_match_paper_table6(arch, depth, params):
    m = resnet_lab.build(arch)
    n = len(m.layer1)
    assert 6 * n + 2 == depth == m.config.depth
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    assert len(convs) + 1 == depth  # every conv is on the main path: option A has no parameters
    assert round(n_params(m) / 1e6, 2 if params < 1e6 else 1) == pytest.approx(params / 1e6)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert sum(isinstance(x, ShortcutA) for x in m.modules()) == 2


def test_cifar_option_a_and_plain_twin_have_identical_parameters():
    res = resnet_lab.build("resnet56", seed=3)
    plain = resnet_lab.build("plain56", seed=3)
    assert res.state_dict().keys() == plain.state_dict().keys()
    for (k, a), b in zip(res.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(res(x), plain(x))  # the shortcut is really there


def test_option_b_projection_adds_1x1_convs():
    m = resnet_lab.build("resnet20", shortcut="B")
    assert n_params(m) > n_params(resnet_lab.build("resnet20"))
    assert isinstance(m.layer2[0].downsample[0], torch.nn.Conv2d)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_plain_twin_is_the_residual_net_minus_projections(arch):
    res = resnet_lab.build(arch, seed=0)
    plain = resnet_lab.build(arch.replace("resnet", "plain"), seed=0)
    res_sd, plain_sd = res.state_dict(), plain.state_dict()
    assert set(res_sd) - set(plain_sd) == {k for k in res_sd if ".downsample." in k}
    assert set(plain_sd) <= set(res_sd)
    for k, v in plain_sd.items():
        assert torch.equal(v, res_sd[k]), k
    assert all(b.downsample is None and not b.residual for _, b in plain.blocks())


def test_different_seeds_give_different_weights():
    a = resnet_lab.build("resnet20", seed=0)
    b = resnet_lab.build("resnet20", seed=1)
    assert not torch.equal(a.conv1.weight, b.conv1.weight)


def test_registry_and_build_options():
    archs = resnet_lab.list_archs()
    for d in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110):
        assert f"resnet{d}" in archs and f"plain{d}" in archs
    assert resnet_lab.build("resnet56", residual=False).residual is False
    assert resnet_lab.twin_name("plain110") == "resnet110"
    m = resnet_lab.build("resnet18", num_classes=7, in_chans=1)
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, 7)
    with pytest.raises(ValueError, match="unknown arch"):
        resnet_lab.build("resnet19")
    nobn = resnet_lab.build("resnet20", norm="none")
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in nobn.modules())


def test_zero_init_last_is_opt_in():
    assert all(float(b.last_bn.weight.detach().abs().sum()) > 0 for _, b in resnet_lab.build("resnet50").blocks())
    z = resnet_lab.build("resnet50", zero_init_last=True)
    assert all(float(b.last_bn.weight.detach().abs().sum()) == 0 for _, b in z.blocks())


def test_features_api_names_stages_and_blocks_in_depth_order():
    m = resnet_lab.build("resnet34")
    assert m.stage_names == ["layer1", "layer2", "layer3", "layer4"]
    names = [n for n, _ in m.blocks()]
    assert len(names) == 16 and names[0] == "layer1.0" and names[-1] == "layer4.2"
    assert m.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    assert resnet_lab.build("resnet110").stage_names == ["layer1", "layer2", "layer3"]


def test_activations_are_distinct_modules_and_not_inplace():
    m = resnet_lab.build("resnet50")
    relus = [x for x in m.modules() if isinstance(x, torch.nn.ReLU)]
    assert len(relus) == len({id(r) for r in relus}) == 1 + 3 * 16
    assert not any(r.inplace for r in relus)


def _hooked_forward(m: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits plus what forward hooks on every block's `bn2` and every block's output were handed."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, blk in m.blocks():
        handles.append(blk.bn2.register_forward_hook(lambda _m, _i, o, k=f"{name}.bn2": seen.__setitem__(k, o)))
        handles.append(blk.register_forward_hook(lambda _m, _i, o, k=name: seen.__setitem__(k, o)))
    try:
        out = m(x)
    finally:
        for h in handles:
            h.remove()
    return out, seen


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "plain20"])
def test_hooks_see_what_each_layer_produced_under_no_grad(arch):
    """No graph recorded is no licence to overwrite: a hook on `bn2` keeps its negative pre-activations.

    On the old code (in place whenever no grad was recorded) the hook's tensor was
    rewritten by the ReLU after the hook ran: min 0.0 instead of about -1.9.
    """
    from resnet_lab.models.verify import randomize_bn

    torch.manual_seed(0)
    m = resnet_lab.build(arch, seed=0).eval()
    randomize_bn(m)
    x = torch.randn(2, 3, 64, 64)
    ref_out, ref = _hooked_forward(m, x)  # gradients recorded: nothing may run in place
    assert ref_out.requires_grad
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            out, seen = _hooked_forward(m, x)
        assert seen.keys() == ref.keys()
        for k, v in ref.items():
            assert torch.equal(seen[k], v.detach()), (mode.__name__, k)
        assert torch.equal(out, ref_out.detach())
    assert float(ref["layer1.0.bn2"].detach().min()) < -0.5  # there were negatives for a ReLU to overwrite


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "plain20"])
def test_set_inplace_is_opt_in_and_changes_no_logit(arch):
    """The opt-in fast path (for copies nobody hooks) gives bit-identical logits and really runs in place."""
    from resnet_lab.models.blocks import BasicBlock, Bottleneck, ReLU, set_inplace
    from resnet_lab.models.verify import randomize_bn

    torch.manual_seed(0)
    m = resnet_lab.build(arch, seed=0).eval()
    randomize_bn(m)
    flagged = [x for x in m.modules() if isinstance(x, (ReLU, BasicBlock, Bottleneck))]
    assert flagged and not any(x.inplace for x in flagged)  # off by default
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        slow = m(x)
    assert set_inplace(m, True) is m and all(x.inplace for x in flagged)
    with torch.no_grad():
        fast, seen = _hooked_forward(m, x)
    assert torch.equal(fast, slow)
    # in place for real: the ReLU after bn2 (BasicBlock's act2, after the add) overwrote what bn2's hook was handed
    assert float(seen["layer1.0.bn2"].min()) >= 0
    with torch.enable_grad():  # while a graph is recorded it stays out of place even when allowed
        _, seen = _hooked_forward(m, x)
    assert float(seen["layer1.0.bn2"].detach().min()) < 0
    set_inplace(m, False)
    with torch.no_grad():
        _, seen = _hooked_forward(m, x)
    assert float(seen["layer1.0.bn2"].min()) < 0


def test_hooks_see_pre_activation_outputs_while_gradients_are_recorded():
    m = resnet_lab.build("resnet20").eval()
    seen = {}
    m.layer1[0].bn2.register_forward_hook(lambda mod, i, o: seen.__setitem__("bn2", o))
    m(torch.randn(1, 3, 32, 32))
    assert float(seen["bn2"].detach().min()) < 0  # not overwritten by the ReLU or the shortcut add


def test_init_generators_are_made_on_the_weights_device(monkeypatch):
    """A CUDA weight refuses a CPU generator ("Expected a 'cuda' device type for generator").

    CPU-side, this checks that every generator the init makes is asked for on
    the device of the weights it fills (the old code made `torch.Generator()`,
    always CPU); the CUDA run itself is in benchmarks/bench_gradflow.py --cuda-check.
    """
    made: list[torch.device | None] = []

    class Spy(torch.Generator):
        def __new__(cls, *args, **kwargs):
            device = kwargs.get("device", args[0] if args else None)
            made.append(None if device is None else torch.device(device))
            return super().__new__(cls, *args, **kwargs)

    m = resnet_lab.build("resnet20", seed=0)
    monkeypatch.setattr(torch, "Generator", Spy)
    m.init_weights(5)
    monkeypatch.undo()
    weighted = [x for x in m.modules() if isinstance(x, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(made) == len(weighted)
    assert all(device == torch.device("cpu") for device in made)  # asked for explicitly, not by default


def test_seeded_init_is_bit_identical_to_a_cpu_generator_and_global_seeding():
    """The shipped checkpoint and every seeded result depend on these exact numbers."""
    from resnet_lab.models.resnet import init_module, init_seed

    a, b = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(3, 8, 3)
    init_module(a, 1234)
    init_module(b, torch.Generator().manual_seed(1234))
    assert torch.equal(a.weight, b.weight)
    lin_a, lin_b = torch.nn.Linear(16, 4), torch.nn.Linear(16, 4)
    init_module(lin_a, 99)
    init_module(lin_b, torch.Generator().manual_seed(99))
    assert torch.equal(lin_a.weight, lin_b.weight) and torch.equal(lin_a.bias, lin_b.bias)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        old_way = resnet_lab.build("resnet20")  # seed drawn from the global RNG, as the checkpoint was made
    new_way = resnet_lab.build("resnet20", seed=init_seed(0))
    for k, v in old_way.state_dict().items():
        assert torch.equal(v, new_way.state_dict()[k]), k


def test_meta_device_build_draws_nothing():
    """A net built on the meta device (shape-only, for memory estimates) must not need a meta generator."""
    with torch.device("meta"):
        m = resnet_lab.build("resnet50", seed=0)
    assert m.conv1.weight.is_meta
    assert m(torch.empty(2, 3, 64, 64, device="meta")).shape == (2, 1000)


# kuangliu/pytorch-cifar's published counts (ResNet18/34/50 with 10 classes)
CIFAR_STEM_PARAMS = {"resnet18_cifar": 11_173_962, "resnet34_cifar": 21_282_122, "resnet50_cifar": 23_520_842}


@pytest.mark.parametrize("arch", list(CIFAR_STEM_PARAMS))
def test_cifar_stem_nets_match_kuangliu(arch):
    """ImageNet widths and blocks, a 3x3 stride-1 stem and no max-pool: a max-pool or a stride-2 stem would leave
    a 2x2 or 1x1 last stage; a 7x7 stem or a missing projection changes the parameter count."""
    m = resnet_lab.build(arch, seed=0)
    assert n_params(m) == CIFAR_STEM_PARAMS[arch]
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and isinstance(m.maxpool, torch.nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    feats = m.forward_features(x)
    assert feats.shape[-2:] == (4, 4)
    assert m.forward_head(feats).shape == (2, 10)
    cfg = m.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["num_classes"] == 10
    assert cfg["mean"] == resnet_lab.models.resnet.CIFAR_MEAN and cfg["std"] == resnet_lab.models.resnet.CIFAR_STD
    assert isinstance(m.layer2[0].downsample[0], torch.nn.Conv2d)  # option B, as kuangliu


@pytest.mark.parametrize("arch", ["resnet18_cifar", "resnet50_cifar"])
def test_cifar_stem_plain_twin_shares_every_common_weight(arch):
    twin = resnet_lab.twin_name(arch)
    assert twin == arch.replace("resnet", "plain") and resnet_lab.twin_name(twin) == arch
    res, plain = resnet_lab.build(arch, seed=4), resnet_lab.build(twin, seed=4)
    res_sd, plain_sd = res.state_dict(), plain.state_dict()
    assert set(res_sd) - set(plain_sd) == {k for k in res_sd if ".downsample." in k} != set()
    for k, v in plain_sd.items():
        assert torch.equal(v, res_sd[k]), k
    assert all(b.downsample is None and not b.residual for _, b in plain.blocks())


def test_list_archs_filters_by_family_and_keeps_the_old_lists():
    """`resnet18_cifar` has a CIFAR stem but is no 6n+2 net: the gradient study's CIFAR list must not grow."""
    assert resnet_lab.list_archs("cifar") == [f"{k}{d}" for k in ("resnet", "plain") for d in (20, 32, 44, 56, 110)]
    assert resnet_lab.list_archs("imagenet") == [f"{k}{d}" for k in ("resnet", "plain")
                                                 for d in (18, 34, 50, 101, 152)]
    assert resnet_lab.list_archs("cifar_stem") == [f"{k}{d}_cifar" for k in ("resnet", "plain") for d in (18, 34, 50)]
    assert len(resnet_lab.list_archs()) == 26
    with pytest.raises(ValueError, match="unknown kind"):
        resnet_lab.list_archs("wide")


def _expected_option_a(x: torch.Tensor, out_planes: int) -> torch.Tensor:
    """akamaster's option A written out by hand: every other pixel, the identity channels in the middle and
    (out - in) / 2 zero channels on each side, built with zeros and slice assignment (no F.pad)."""
    n, c, h, w = x.shape
    side = (out_planes - c) // 2
    expected = torch.zeros(n, out_planes, h // 2, w // 2)
    for i in range(h // 2):
        for j in range(w // 2):
            expected[:, side:side + c, i, j] = x[:, :, 2 * i, 2 * j]
    return expected


@pytest.mark.parametrize("in_planes,out_planes", [(16, 32), (32, 64)])
def test_shortcut_a_pads_equally_on_both_sides_as_akamaster(in_planes, out_planes):
    """akamaster/pytorch_resnet_cifar10 pads `planes // 4` zero channels before AND after the identity: a
    one-sided pad (all zeros after the identity, `F.pad(x, (0, 0, 0, 0, 0, pad))`) puts channel k at k instead
    of k + pad/2, so loading their checkpoints would silently add the wrong shortcut. The one-sided version is
    built below too and must fail the same comparison, so this test can catch it."""
    x = torch.randn(2, in_planes, 8, 8, generator=torch.Generator().manual_seed(0)) + 5  # no zeros of its own
    expected = _expected_option_a(x, out_planes)
    got = ShortcutA(in_planes, out_planes, stride=2)(x)
    assert got.shape == (2, out_planes, 4, 4)
    assert torch.equal(got, expected)
    one_sided = torch.zeros(2, out_planes, 4, 4)
    one_sided[:, :in_planes] = x[:, :, ::2, ::2]
    assert not torch.equal(one_sided, expected)  # what the old one-sided pad would give fails the comparison
    m = resnet_lab.build("resnet20", seed=0)  # and the nets use exactly this module where shapes change
    stage = {16: m.layer2, 32: m.layer3}[in_planes]
    assert torch.equal(stage[0].downsample(x), expected)
