"""Every foldable block: training form == folded form, for random weights and BatchNorm statistics."""
import math
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import (register_module_module_registration_hook,
                                     register_module_parameter_registration_hook)
from torch.overrides import TorchFunctionMode

from helpers import randomize_batchnorm_, rel_error
from models.common import OREPA, Conv, DWConv, QARepVGGBlock, RepVGGBlock
from models.orepa import frequency_prior
from models.reparameterizable import Reparameterizable
from models.yolo import IDetect
from models.yolov7_blocks import ImplicitA, ImplicitM, RepConv

# (c1, c2, k, s, g)
GEOMETRIES = [(8, 8, 3, 1, 1), (8, 16, 3, 2, 1), (16, 16, 3, 1, 4), (8, 16, 5, 1, 2), (16, 16, 1, 1, 1),
              (12, 24, 3, 2, 3), (16, 32, 3, 1, 8)]


def implicit_head(c1, c2, k, s, g, **kw) -> IDetect:
    """YOLOv7's IDetect on two levels of c1 and c2 channels (k, s and g do not apply: its convs are 1x1),
    with strides set so the decoded boxes depend on every term."""
    head = IDetect(3, [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]], (c1, c2), **kw)
    head.stride = torch.tensor([8.0, 16.0])
    return head


BLOCKS = {
    "Conv": lambda c1, c2, k, s, g, **kw: Conv(c1, c2, k, s, g=g, **kw),
    "RepVGGBlock": lambda c1, c2, k, s, g, **kw: RepVGGBlock(c1, c2, k, s, g=g, **kw),
    "RepVGGBlock+SE": lambda c1, c2, k, s, g, **kw: RepVGGBlock(c1, c2, k, s, g=g, use_se=True, **kw),
    "QARepVGGBlock": lambda c1, c2, k, s, g, **kw: QARepVGGBlock(c1, c2, k, s, g=g, **kw),
    "QARepVGGBlock+SE": lambda c1, c2, k, s, g, **kw: QARepVGGBlock(c1, c2, k, s, g=g, use_se=True, **kw),
    "OREPA": lambda c1, c2, k, s, g, **kw: OREPA(c1, c2, k, s, g=g, **kw),
    "RepConv": lambda c1, c2, k, s, g, **kw: RepConv(c1, c2, k, s, g=g, **kw),
    "IDetect": implicit_head,
}
MULTI_CONV = {"IDetect"}  # folds several convs itself, so it has no single (kernel, bias)
TRAINING_ONLY = (nn.BatchNorm2d, ImplicitA, ImplicitM)  # nothing of these may survive a fold


def randomized(block: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters everywhere (OREPA's zero-initialised branches too) and random BN stats."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "vector" in name else 0.3))
    return randomize_batchnorm_(block, seed).eval()


def block_input(block: nn.Module, c1: int, h: int = 17, w: int = 13):
    """A batch for ``block``: one map, or one per level (halving the size) for a detection head."""
    if isinstance(block, IDetect):
        return [torch.randn(2, m.in_channels, h >> i, w >> i) for i, m in enumerate(block.m)]
    return torch.randn(2, c1, h, w)


def outputs(block: nn.Module, x) -> list[torch.Tensor]:
    """The block's output tensors; a head gets its own copy of the list (it writes into it) and returns
    (decoded, raw maps) in eval mode."""
    if isinstance(x, torch.Tensor):
        return [block(x)]
    decoded, raw = block(list(x))
    return [decoded, *raw]


def fold_check(block: nn.Module, x) -> float:
    with torch.no_grad():
        before = outputs(block, x)
        block.fold()
        after = outputs(block, x)
    return max(rel_error(b, a) for b, a in zip(before, after))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "c{}-{}_k{}_s{}_g{}".format(*g))
@pytest.mark.parametrize("kind", list(BLOCKS))
def test_fold_is_exact(kind, geometry):
    c1, c2, k, s, g = geometry
    block = randomized(BLOCKS[kind](c1, c2, k, s, g), seed=zlib.crc32(f"{kind}{geometry}".encode()) % 1000)
    x = block_input(block, c1)
    assert fold_check(block, x) < 1e-5
    assert block.deploy
    assert not any(isinstance(m, TRAINING_ONLY) for m in block.modules())


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_fold_is_idempotent_and_state_dict_loads_into_deploy_layout(kind):
    block = randomized(BLOCKS[kind](8, 8, 3, 1, 1))
    x = block_input(block, 8, 10, 10)
    block.fold()
    state = {k: v.clone() for k, v in block.state_dict().items()}
    block.fold()  # second call: nothing changes
    assert all(torch.equal(state[k], v) for k, v in block.state_dict().items())
    fresh = BLOCKS[kind](8, 8, 3, 1, 1, deploy=True)
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(outputs(fresh.eval(), x), outputs(block, x)))


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_construction_builds_no_branch_it_throws_away(kind):
    """Every module and parameter created while a block is built ends up in it: no subclass lets its base
    build a branch and then replaces it."""
    made = []
    hooks = [register_module_module_registration_hook(lambda parent, name, m: made.append(m)),
             register_module_parameter_registration_hook(lambda parent, name, p: made.append(p))]
    try:
        block = BLOCKS[kind](8, 8, 3, 1, 1)
    finally:
        for hook in hooks:
            hook.remove()
    kept = {id(x) for x in (*block.modules(), *block.parameters())}
    assert made and all(id(x) in kept for x in made if x is not None)


def test_dilated_and_custom_padding_blocks_fold_exactly():
    x = torch.randn(2, 8, 16, 16)
    assert fold_check(randomized(OREPA(8, 8, 3, 1, d=2)), x) < 1e-5
    assert fold_check(randomized(RepVGGBlock(8, 8, 3, 1, d=2)), x) < 1e-5
    assert fold_check(randomized(Conv(8, 8, 3, 1, p=0)), x) < 1e-5
    assert fold_check(randomized(DWConv(8, 16, 3, 2)), x) < 1e-5


def test_fold_in_float64_and_bfloat16():
    x = torch.randn(2, 8, 12, 12, dtype=torch.float64)
    block = randomized(OREPA(8, 16, 3, 1, g=2)).double()
    assert fold_check(block, x) < 1e-12
    assert block.orepa_reparam.weight.dtype == torch.float64

    ref = randomized(RepVGGBlock(8, 8, 3, 1), seed=3)
    low = randomized(RepVGGBlock(8, 8, 3, 1), seed=3).to(torch.bfloat16)
    ref.fold()
    low.fold()
    assert low.rbr_reparam.weight.dtype == torch.bfloat16
    # folded in fp32 then rounded once: within bf16's rounding of the fp32 kernel
    assert rel_error(ref.rbr_reparam.weight, low.rbr_reparam.weight.float()) < 2 ** -8


def test_every_foldable_block_shares_the_interface():
    for kind, make in BLOCKS.items():
        block = make(8, 8, 3, 1, 1)
        assert isinstance(block, Reparameterizable)
        if kind in MULTI_CONV:
            continue
        kernel, bias = block.get_equivalent_kernel_bias()
        assert kernel.shape == (8, 8, 3, 3) and bias.shape == (8,)


def test_equivalent_kernel_is_differentiable():
    block = OREPA(4, 4, 3, 1)
    kernel, bias = block.get_equivalent_kernel_bias()
    (kernel.sum() + bias.sum()).backward()
    assert block.weight_orepa_gconv_dw.grad.abs().sum() > 0
    assert block.vector.grad.abs().sum() > 0


def test_repvgg_identity_branch_only_when_shapes_match():
    assert isinstance(RepVGGBlock(8, 8, 3, 1).rbr_identity, nn.BatchNorm2d)
    assert RepVGGBlock(8, 16, 3, 1).rbr_identity is None
    assert RepVGGBlock(8, 8, 3, 2).rbr_identity is None
    names = set(RepVGGBlock(8, 8, 3, 1).state_dict())
    assert {"rbr_dense.conv.weight", "rbr_dense.bn.running_var", "rbr_1x1.conv.weight", "rbr_identity.weight"} <= names


def bn_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


# unfused state-dict keys, in order (RepVGG's, YOLOv7's RepConv's, and what our QARepVGG checkpoints hold);
# the identity branch's keys come first and exist only when the output can equal the input
LAYOUTS = {
    "RepVGGBlock": ("rbr_identity", ["rbr_dense.conv.weight", *bn_keys("rbr_dense.bn"),
                                     "rbr_1x1.conv.weight", *bn_keys("rbr_1x1.bn")]),
    "QARepVGGBlock": (None, ["rbr_dense.conv.weight", *bn_keys("rbr_dense.bn"), "rbr_1x1.weight", *bn_keys("bn")]),
    "RepConv": ("rbr_identity", ["rbr_dense.0.weight", *bn_keys("rbr_dense.1"),
                                 "rbr_1x1.0.weight", *bn_keys("rbr_1x1.1")]),
}


@pytest.mark.parametrize("c1,c2,s,g", [(8, 8, 1, 1), (8, 16, 2, 2)])
@pytest.mark.parametrize("kind", [*LAYOUTS, "RepVGGBlock+SE", "QARepVGGBlock+SE"])
def test_rep_block_state_dict_layout(kind, c1, c2, s, g):
    block = BLOCKS[kind](c1, c2, 3, s, g)
    identity, branches = LAYOUTS[kind.removesuffix("+SE")]
    expected = ["se.down.weight", "se.down.bias", "se.up.weight", "se.up.bias"] if kind.endswith("+SE") else []
    expected += bn_keys(identity) if identity and (c1, s) == (c2, 1) else []
    state = block.state_dict()
    assert list(state) == expected + branches
    one = next(k for k in branches if k.startswith("rbr_1x1"))  # branches[0] is the dense conv's weight
    assert state[branches[0]].shape == (c2, c1 // g, 3, 3) and state[one].shape == (c2, c1 // g, 1, 1)


def test_qarepvgg_layout_one_batchnorm_after_the_sum():
    """Chu et al.'s layout: BN only on the kxk branch and after the sum; the 1x1 branch and identity are bare."""
    block = QARepVGGBlock(8, 8, 3, 1)
    names = set(block.state_dict())
    assert {"rbr_dense.conv.weight", "rbr_dense.bn.running_var", "rbr_1x1.weight", "bn.weight", "bn.running_var"} <= names
    assert not any(n.startswith(("rbr_1x1.bn", "rbr_identity")) for n in names)
    assert isinstance(block.rbr_identity, nn.Identity) and QARepVGGBlock(8, 8, 3, 2).rbr_identity is None
    assert block.rbr_1x1.bias is None
    # the shared BN sees the sum: scaling its weight scales every branch's contribution alike
    block = randomized(block, seed=5)
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        z = block.rbr_dense(x) + block.rbr_1x1(x) + x
        assert torch.allclose(block(x), block.nonlinearity(block.bn(z)), atol=1e-6)


# --- OREPA: reference layout and branch semantics ---------------------------------------------

def test_orepa_parameter_names_and_shapes_match_reference():
    c1, c2, k = 16, 32, 3
    expected = {
        "weight_orepa_origin": (c2, c1, k, k), "weight_orepa_avg_conv": (c2, c1, 1, 1),
        "weight_orepa_pfir_conv": (c2, c1, 1, 1), "weight_orepa_avg_avg": (k, k),
        "weight_orepa_1x1": (c2, c1, 1, 1), "weight_orepa_1x1_kxk_idconv1": (c1, c1, 1, 1),
        "id_tensor": (c1, c1, 1, 1), "weight_orepa_1x1_kxk_conv2": (c2, c1, k, k),
        "weight_orepa_gconv_dw": (c1 * 8, 1, k, k), "weight_orepa_gconv_pw": (c2, c1 * 8, 1, 1),
        "vector": (6, c2), "weight_orepa_prior": (c2, k, k), "bn.weight": (c2,), "bn.bias": (c2,),
        "bn.running_mean": (c2,), "bn.running_var": (c2,), "bn.num_batches_tracked": (),
    }
    got = {name: tuple(t.shape) for name, t in OREPA(c1, c2, k).state_dict().items()}
    assert got == expected
    grouped = OREPA(16, 32, 3, g=8).state_dict()  # g > 4: the 1x1-kxk branch doubles its width
    assert tuple(grouped["weight_orepa_1x1_kxk_idconv1"].shape) == (32, 2, 1, 1)
    assert tuple(grouped["weight_orepa_1x1_kxk_conv2"].shape) == (32, 4, 3, 3)
    assert tuple(grouped["weight_orepa_gconv_pw"].shape) == (32, 16, 1, 1)


def test_orepa_initialisation_follows_reference():
    block = OREPA(8, 8, 3)
    assert torch.equal(block.vector[:, 0], torch.tensor([0.25, 0.25, 0.0, 0.5, 1.0, 0.5]))
    assert torch.count_nonzero(block.weight_orepa_1x1_kxk_idconv1) == 0
    assert torch.equal(block.id_tensor[:, :, 0, 0], torch.eye(8))


def reference_prior(channels, k):
    """The reference's frequency prior written out with math.cos (its loops hard-code k = 3)."""
    prior = torch.empty(channels, k, k)
    half = channels / 2
    for i in range(channels):
        for h in range(k):
            for w in range(k):
                prior[i, h, w] = math.cos(math.pi * ((h + 0.5) * (i + 1) if i < half else (w + 0.5) * (i + 1 - half)) / k)
    return prior


@pytest.mark.parametrize("channels,k", [(8, 3), (7, 3), (6, 5), (4, 1)])
def test_frequency_prior(channels, k):
    assert torch.allclose(frequency_prior(channels, k), reference_prior(channels, k), atol=1e-7)


def interleaved_rows(pw: torch.Tensor, groups: int) -> torch.Tensor:
    """The reference's dw-pw branch feeds output c*(o/g)+oo from pointwise row oo*g+c."""
    o = pw.shape[0]
    rows = [oo * groups + c for c in range(groups) for oo in range(o // groups)]
    return pw[rows]


def orepa_branchwise(block: OREPA, x: torch.Tensor) -> torch.Tensor:
    """OREPA's eval output computed branch by branch on feature maps (what the block stands for)."""
    s, p, g, k, c1 = block.s, block.p, block.g, block.k, block.c1
    v = block.vector.view(6, 1, -1, 1, 1)

    def conv(inp, w, **kw):
        return F.conv2d(inp, w, **kw)

    origin = conv(x, block.weight_orepa_origin, stride=s, padding=p, groups=g)
    avg = F.avg_pool2d(conv(x, block.weight_orepa_avg_conv, groups=g), k, s, p, count_include_pad=True)
    prior = block.weight_orepa_prior.unsqueeze(1)
    pfir = conv(conv(x, block.weight_orepa_pfir_conv, groups=g), prior, stride=s, padding=p, groups=block.c2)
    mid = conv(x, block.weight_orepa_1x1_kxk_idconv1 + block.id_tensor, groups=g)
    one_kxk = conv(mid, block.weight_orepa_1x1_kxk_conv2, stride=s, padding=p, groups=g)
    one = conv(x, block.weight_orepa_1x1, stride=s, padding=p - k // 2, groups=g)
    dw = conv(x, block.weight_orepa_gconv_dw, stride=s, padding=p, groups=c1)
    dwpw = conv(dw, interleaved_rows(block.weight_orepa_gconv_pw, g), groups=g)
    total = sum(b * v[i] for i, b in enumerate((origin, avg, pfir, one_kxk, one, dwpw)))
    return block.act(block.bn(total))


@pytest.mark.parametrize("c1,c2,k,s,g", [(8, 8, 3, 1, 1), (8, 16, 3, 2, 2), (16, 16, 5, 1, 4), (16, 32, 3, 1, 8)])
def test_orepa_kernel_equals_its_branches_on_feature_maps(c1, c2, k, s, g):
    block = randomized(OREPA(c1, c2, k, s, g=g), seed=7)
    x = torch.randn(2, c1, 15, 11)
    with torch.no_grad():
        assert rel_error(orepa_branchwise(block, x), block(x)) < 1e-5


class ConvCounter(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.conv2d:
            self.calls.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


def test_orepa_training_step_convolves_the_feature_map_once():
    block = OREPA(16, 16, 3, 1).train()
    x = torch.randn(4, 16, 20, 20)
    with ConvCounter() as counter:
        block(x).sum().backward()
    assert counter.calls == [tuple(x.shape)]
    assert block.weight_orepa_1x1_kxk_idconv1.grad is not None


def test_orepa_rejects_bad_groups():
    with pytest.raises(ValueError, match="divisible"):
        OREPA(6, 8, 3, g=4)
