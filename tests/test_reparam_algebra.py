"""The kernel algebra in utils/reparam.py against literal convolutions on feature maps."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import randomize_batchnorm_, rel_error
from utils.reparam import (compose_1x1_kxk, depthwise_pointwise_kernel, fold_implicit, fuse_bn, identity_kernel,
                           pad_to_kernel)


@pytest.mark.parametrize("channels,groups,k", [(8, 1, 3), (8, 2, 3), (8, 8, 3), (6, 3, 5), (4, 1, 1)])
def test_identity_kernel_returns_input(channels, groups, k):
    x = torch.randn(2, channels, 9, 7)
    y = F.conv2d(x, identity_kernel(channels, groups, k), padding=k // 2, groups=groups)
    assert torch.equal(y, x)


def test_fuse_bn_matches_conv_then_bn():
    conv = nn.Conv2d(6, 10, 3, padding=1, bias=False)
    bn = randomize_batchnorm_(nn.BatchNorm2d(10), seed=1).eval()
    x = torch.randn(2, 6, 12, 12)
    kernel, bias = fuse_bn(conv.weight, bn)
    assert rel_error(bn(conv(x)), F.conv2d(x, kernel, bias, padding=1)) < 1e-6


def test_fuse_bn_with_the_conv_bias_matches_biased_conv_then_bn():
    """QARepVGG's case: the BatchNorm after the sum sees the branches' summed bias."""
    conv = nn.Conv2d(6, 10, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.bias.normal_()
    bn = randomize_batchnorm_(nn.BatchNorm2d(10), seed=2).eval()
    x = torch.randn(2, 6, 12, 12)
    kernel, bias = fuse_bn(conv.weight, bn, conv.bias)
    assert rel_error(bn(conv(x)), F.conv2d(x, kernel, bias, padding=1)) < 1e-6


@pytest.mark.parametrize("k,stride", [(3, 1), (5, 2), (7, 1)])
def test_pad_to_kernel_keeps_the_centre(k, stride):
    w = torch.randn(5, 4, 1, 1)
    x = torch.randn(1, 4, 15, 15)
    y1 = F.conv2d(x, w, stride=stride)
    yk = F.conv2d(x, pad_to_kernel(w, k), stride=stride, padding=k // 2)
    assert rel_error(y1, yk) < 1e-6


def test_pad_to_kernel_rejects_off_centre_sizes():
    with pytest.raises(ValueError, match="centre"):
        pad_to_kernel(torch.randn(2, 2, 2, 2), 3)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_compose_1x1_kxk_equals_two_convs(groups):
    c, t, o, k = 8, 12, 16, 3
    k1 = torch.randn(t, c // groups, 1, 1)
    k2 = torch.randn(o, t // groups, k, k)
    x = torch.randn(2, c, 10, 10)
    two_convs = F.conv2d(F.conv2d(x, k1, groups=groups), k2, padding=1, groups=groups, stride=2)
    one_conv = F.conv2d(x, compose_1x1_kxk(k1, k2, groups), padding=1, groups=groups, stride=2)
    assert rel_error(two_convs, one_conv) < 1e-5


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_depthwise_pointwise_kernel_equals_two_convs(groups):
    c, m, o, k = 8, 3, 12, 3
    dw = torch.randn(c * m, 1, k, k)
    pw = torch.randn(o, c * m // groups, 1, 1)
    x = torch.randn(2, c, 11, 9)
    two_convs = F.conv2d(F.conv2d(x, dw, padding=1, groups=c), pw, groups=groups)
    one_conv = F.conv2d(x, depthwise_pointwise_kernel(dw, pw, c, groups), padding=1, groups=groups)
    assert rel_error(two_convs, one_conv) < 1e-5


def test_algebra_keeps_gradients():
    k1 = torch.randn(4, 4, 1, 1, requires_grad=True)
    k2 = torch.randn(4, 4, 3, 3, requires_grad=True)
    compose_1x1_kxk(k1, k2).sum().backward()
    assert k1.grad is not None and k2.grad is not None and k1.grad.abs().sum() > 0


def test_fold_implicit_is_exact_for_1x1_and_refuses_larger_kernels():
    conv = nn.Conv2d(6, 4, 1)
    a, m = torch.randn(1, 6, 1, 1), torch.randn(1, 4, 1, 1)
    x = torch.randn(2, 6, 5, 7)
    w, b = fold_implicit(conv.weight, conv.bias, a, m)
    torch.testing.assert_close(nn.functional.conv2d(x, w, b), m * conv(x + a))
    with pytest.raises(ValueError, match="1x1"):
        fold_implicit(torch.randn(4, 6, 3, 3), conv.bias, a, m)
