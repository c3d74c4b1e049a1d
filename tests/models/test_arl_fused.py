"""ARL's fused attention kernel (Triton) against the eager sum.

On a CUDA machine the kernels run compiled; elsewhere Triton's CPU interpreter runs them, in a
child pytest (TRITON_INTERPRET is set for it alone). Skipped where Triton is not installed (CPU builds of torch come without it; ``make
test`` installs it where it has a wheel: Linux), a failure in CI (tests/references.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medsight.models import create_model
from medsight.models.arl import attention_sum

from references import require

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton reads TRITON_INTERPRET when it is first imported (its own library kernels are decorated
# then), so on a CPU the kernel tests run in a child pytest with the variable set, and this
# session's Triton and environment stay as they are.
IN_CHILD = os.environ.get("TRITON_INTERPRET") == "1"
HERE = DEVICE == "cuda" or IN_CHILD
require("triton", "Triton is not installed (CPU builds of torch come without it)")
from medsight.models import arl_fused  # noqa: E402

kernel_test = pytest.mark.skipif(not HERE, reason="run by test_kernels_under_the_interpreter in a child pytest")


@pytest.mark.skipif(HERE, reason="the kernel tests run in this process")
def test_kernels_under_the_interpreter():
    """This module's kernel tests, under Triton's CPU interpreter, in a child pytest."""
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                           env={**os.environ, "TRITON_INTERPRET": "1"}, cwd=Path(__file__).parents[2],
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    summary = child.stdout.strip().splitlines()[-1]
    ran = int(re.search(r"(\d+) passed", summary).group(1))
    assert ran == 7 and "skipped" in summary and "failed" not in summary, summary  # this test skips there


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last if t.ndim == 4 else torch.channels_last_3d)


def eager_and_fused(shape, dtype=torch.float32, grad_layout=channels_last):
    """(fused, eager) results: output and the gradients of F, x_s and alpha, for one random case.
    The eager reference computes in float32 from the same (rounded) inputs."""
    f = channels_last(torch.randn(shape, device=DEVICE) * 2).to(dtype)
    x = channels_last(torch.randn(shape, device=DEVICE)).to(dtype)
    dy = grad_layout(torch.randn(shape, device=DEVICE).to(dtype))
    results = []
    for fused in (True, False):
        ff, xx = (t.detach().clone() if fused else t.detach().float() for t in (f, x))
        ff.requires_grad_(), xx.requires_grad_()
        alpha = torch.tensor(0.7, device=DEVICE, requires_grad=True)
        y = (arl_fused.fused_attention_relu(ff, xx, alpha) if fused
             else torch.relu(attention_sum(ff, xx, alpha, "channel")))  # fmt: skip
        y.backward(dy if fused else dy.float())
        results.append((y.detach(), ff.grad, xx.grad, alpha.grad))
    return results


@kernel_test
@pytest.mark.parametrize("shape", [(2, 24, 5, 7), (3, 256, 4, 4), (2, 6, 3, 4, 5)])
def test_fused_attention_relu_equals_the_eager_sum(shape):
    """Channel counts that are not powers of two, row counts that do not fill a program, 2D and 3D."""
    (y, df, dx, dalpha), want = eager_and_fused(shape)
    for got, ref in zip((y, df, dx, dalpha), want):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    memory = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    assert all(t.is_contiguous(memory_format=memory) for t in (y, df, dx)), "outputs keep the layout"


@kernel_test
def test_bf16_storage_float32_arithmetic():
    got, want = eager_and_fused((2, 40, 6, 6), torch.bfloat16)
    for g, w in zip(got[:3], want[:3]):
        assert g.dtype == torch.bfloat16
        assert float((g.float() - w).norm() / w.norm()) < 8e-3  # the rounding of the stored result only
    torch.testing.assert_close(got[3], want[3], rtol=1e-5, atol=1e-6)  # alpha's gradient: float32 throughout


@kernel_test
def test_gradient_in_another_layout():
    got, want = eager_and_fused((2, 12, 4, 5), grad_layout=lambda t: t.contiguous())
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


@kernel_test
def test_supports_only_channels_last_pairs():
    f = channels_last(torch.randn(2, 8, 4, 4, device=DEVICE))
    assert arl_fused.supports(f, f.clone())
    assert not arl_fused.supports(f.contiguous(), f.contiguous()), "channels first"
    assert not arl_fused.supports(f, f.double()), "mixed dtypes"
    assert not arl_fused.supports(f, channels_last(torch.randn(2, 8, 4, 5, device=DEVICE))), "mixed shapes"


@kernel_test
def test_a_fused_model_computes_the_eager_model():
    torch.manual_seed(0)
    eager = create_model("arlcnn14", width=8, num_classes=3, alpha_init=0.5, fused=False)
    fused = create_model("arlcnn14", width=8, num_classes=3, alpha_init=0.5, fused=True)
    fused.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 32, 32, device=DEVICE).contiguous(memory_format=torch.channels_last)
    grads = []
    for model in (eager, fused):
        # eval: batch norm over 2 images at the last stage's 1x1 would amplify rounding differences
        model.to(DEVICE, memory_format=torch.channels_last).eval()
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # the same float32 convolutions
            out = model(x)
            out.square().sum().backward()
        grads.append((out.detach(), torch.stack([a.grad for a in model.alphas()]), model.conv1.weight.grad))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert "fused=True" in repr(fused.layer1[0])
