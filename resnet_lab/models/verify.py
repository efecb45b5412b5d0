"""Proof that our ResNets are timm's (and torchvision's) networks: same weights, same outputs, same gradients.

A fresh timm model is a weak witness: its default init zeroes the last BN gamma
of every block, so each residual branch contributes nothing, and a fresh BN is
near-identity in eval mode. A wrong branch would still pass. So every BN's
weight, bias, running mean and running variance is randomized first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .resnet import build

TOLERANCE = 1e-5


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(torch.empty(n).uniform_(0.2, 0.8, generator=g))
            m.bias.copy_(torch.empty(n).normal_(0.0, 0.2, generator=g))
            m.running_mean.copy_(torch.empty(n).normal_(0.0, 0.2, generator=g))
            m.running_var.copy_(torch.empty(n).uniform_(0.5, 2.0, generator=g))


def reference_model(arch: str, source: str = "timm") -> nn.Module:
    """timm's or torchvision's network of the same name, random init."""
    if source == "timm":
        import timm

        return timm.create_model(arch)
    import torchvision

    return getattr(torchvision.models, arch)()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max())


def compare(ours: nn.Module, ref: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Max |diff| of eval logits, train-mode logits and every parameter gradient after one backward."""
    ours.eval(), ref.eval()
    with torch.no_grad():
        eval_diff = _max_diff(ours(x), ref(x))
    ours.train(), ref.train()
    ours.zero_grad(set_to_none=True), ref.zero_grad(set_to_none=True)
    out_ours, out_ref = ours(x), ref(x)
    train_diff = _max_diff(out_ours, out_ref)
    # A loss whose gradient reaches every logit with a different weight.
    w = torch.linspace(-1, 1, out_ours.shape[1])
    (out_ours * w).sum().backward()
    (out_ref * w).sum().backward()
    ref_params = dict(ref.named_parameters())
    grad_diff, grad_scale = 0.0, 0.0
    for name, p in ours.named_parameters():
        q = ref_params[name]
        grad_diff = max(grad_diff, _max_diff(p.grad, q.grad))
        grad_scale = max(grad_scale, float(q.grad.abs().max()))
    ours.eval(), ref.eval()
    return {"eval_logits": eval_diff, "train_logits": train_diff, "grads": grad_diff,
            "grads_rel": grad_diff / max(grad_scale, 1e-12)}


@dataclass
class VerifyResult:
    arch: str
    reference: str
    params_ours: int
    params_ref: int
    diffs: dict[str, float]

    @property
    def ok(self) -> bool:
        d = self.diffs
        return (self.params_ours == self.params_ref and d["eval_logits"] <= TOLERANCE
                and d["train_logits"] <= TOLERANCE and min(d["grads"], d["grads_rel"]) <= TOLERANCE)


def twin_nets(arch: str, reference: str = "timm", seed: int = 0,
              state_dict: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, nn.Module]:
    """Ours and the reference's net with the same weights (strict loads both ways round).

    The weights are ours, built from `seed` with BN randomized, so they are reproducible without seeding
    torch's global RNG (which other threads share; the reference's own init is overwritten). With
    `state_dict` (real pretrained weights), both get those and BN is left as trained.
    """
    ref = reference_model(arch, reference)
    ours = build(arch, num_classes=ref.fc.out_features, seed=seed)
    if state_dict is None:
        randomize_bn(ours, seed)
        state_dict = ours.state_dict()
    ref.load_state_dict(state_dict, strict=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def verify_arch(arch: str, reference: str = "timm", image_size: int = 224, batch: int = 2, seed: int = 0,
                state_dict: dict[str, torch.Tensor] | None = None) -> VerifyResult:
    """`twin_nets`, compared on one seeded batch: logits in eval and train mode, and every gradient."""
    ours, ref = twin_nets(arch, reference, seed, state_dict)
    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return VerifyResult(arch, reference, count(ours), count(ref), compare(ours, ref, x))


def table(results: list[VerifyResult]) -> str:
    import pandas as pd

    rows = [{"arch": r.arch, "reference": r.reference, "params ours": f"{r.params_ours:,}",
             "params ref": f"{r.params_ref:,}", **{f"max|diff| {k}": f"{v:.1e}" for k, v in r.diffs.items()},
             "verdict": "OK" if r.ok else "MISMATCH"} for r in results]
    return pd.DataFrame(rows).to_string(index=False)
