"""Training throughput (images/s) of ARL-CNN50 against a plain ResNet-50 of the same layout, in one
process on one device, in turns so all see the same machine state. The ARL term
should cost under 10 %.

    python -m benchmarks.arl_throughput --device cuda --batch 64 --size 224 --steps 20
    python -m benchmarks.arl_throughput --device cpu --batch 8 --size 128 --steps 3

ARL-CNN50 is timed with ``fused=False`` (the attention sum in eager torch) and, on CUDA, with
``fused=True``, its default there (the sum and ReLU as one Triton kernel each way). On CUDA it
trains in bf16 autocast with channels_last, as medsight's loop does.
``--compile`` compiles every model whole with ``torch.compile``; the compilation falls in the
untimed warm-up steps. On CUDA it also reports each model's GPU kernel time per step (see
:func:`device_time`); ``--profile N`` lists each model's N costliest kernels.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from medsight.models import create_model

PROFILED_STEPS = 5  # training steps whose kernels device_time sums


def step_time(model, x, y, device, steps: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    for _ in range(steps + 1):  # the first step warms up (cudnn autotuning, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]  # median step


def device_time(model, x, y, device, top: int = 0) -> float:
    """Milliseconds of kernel time on the GPU per training step, summed over the kernels of
    ``PROFILED_STEPS`` steps (torch.profiler) after two warm-up steps; with ``top``, print the
    costliest kernels too, with the host time of each op.

    At batch 64 a ResNet-50 step keeps an H100 busy for only about 60 % of its wall time (the rest
    is the host launching kernels), so images/s alone mixes the GPU's cost of the ARL term with
    the host's speed; this is the GPU's part."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    step_time(model, x, y, device, 2)
    activities = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if top else [])  # the table shows host time too
    with profile(activities=activities) as prof:
        step_time(model, x, y, device, PROFILED_STEPS - 1)  # step_time runs one more than it is asked for
    events = prof.key_averages()
    if top:
        print(events.table(sort_by="self_cuda_time_total", row_limit=top, max_name_column_width=70))
    kernels_us = sum(e.self_device_time_total for e in events
                     if e.device_type == DeviceType.CUDA and not e.is_user_annotation)
    return kernels_us / PROFILED_STEPS / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (compile time not timed)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="CUDA: also list each model's N costliest kernels")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=fmt)
    y = torch.randint(0, 3, (args.batch,), device=device)
    models = {"resnet50": create_model("resnet50", num_classes=3),
              "arlcnn50 eager": create_model("arlcnn50", num_classes=3, fused=False)}
    if device.type == "cuda":  # the Triton kernel of the attention sum (medsight.models.arl_fused), the default
        models["arlcnn50 fused"] = create_model("arlcnn50", num_classes=3, fused=True)
    models = {name: m.to(device, memory_format=fmt) for name, m in models.items()}
    if args.compile:
        models = {name: torch.compile(m) for name, m in models.items()}
    results = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            results[name].append(args.batch / step_time(model, x, y, device, args.steps))
    best = {name: max(v) for name, v in results.items()}
    gpu_ms = {}
    for name, model in models.items() if device.type == "cuda" else ():
        if args.profile:
            print(f"{name}: the {args.profile} kernels with the most GPU time over {PROFILED_STEPS} training steps")
        gpu_ms[name] = device_time(model, x, y, device, args.profile)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{name}, batch {args.batch}, {args.size} px, median of {args.steps} steps, best of {args.rounds} rounds"
          f"{', every model torch.compile-d' if args.compile else ''}")
    for model, ips in best.items():
        line = f"  {model:15s} {ips:8.1f} images/s"
        if model != "resnet50":
            line += f"  ARL overhead {100 * (best['resnet50'] / ips - 1):5.1f} %"
        if gpu_ms:
            line += f"  | GPU kernels {gpu_ms[model]:6.2f} ms a step"
            if model != "resnet50":
                line += f"  ARL overhead {100 * (gpu_ms[model] / gpu_ms['resnet50'] - 1):5.1f} %"
        print(line)


if __name__ == "__main__":
    main()
