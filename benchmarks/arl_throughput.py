"""Training throughput (images/s) of ARL-CNN50 against a plain ResNet-50 of the same layout, in one
process on one device, alternating the two so both see the same machine state. The ARL term
should cost under 10 %.

    python benchmarks/arl_throughput.py --device cuda --batch 64 --size 224 --steps 20
    python benchmarks/arl_throughput.py --device cpu --batch 8 --size 128 --steps 3

On CUDA it trains in bf16 autocast with channels_last, as medsight's loop does, and also times
ARL-CNN50 with ``fused=True`` (the attention sum and ReLU as one Triton kernel each way).
``--compile`` compiles every model whole with ``torch.compile``; the compilation falls in the
untimed warm-up steps.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from medsight.models import create_model


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (compile time not timed)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=fmt)
    y = torch.randint(0, 3, (args.batch,), device=device)
    models = {"resnet50": create_model("resnet50", num_classes=3), "arlcnn50": create_model("arlcnn50", num_classes=3)}
    if device.type == "cuda":  # the Triton kernel of the attention sum (medsight.models.arl_fused)
        models["arlcnn50 fused"] = create_model("arlcnn50", num_classes=3, fused=True)
    models = {name: m.to(device, memory_format=fmt) for name, m in models.items()}
    if args.compile:
        models = {name: torch.compile(m) for name, m in models.items()}
    results = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            results[name].append(args.batch / step_time(model, x, y, device, args.steps))
    best = {name: max(v) for name, v in results.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{name}, batch {args.batch}, {args.size} px, median of {args.steps} steps, best of {args.rounds} rounds"
          f"{', every model torch.compile-d' if args.compile else ''}")
    for model, ips in best.items():
        overhead = "" if model == "resnet50" else f"  ARL overhead {100 * (best['resnet50'] / ips - 1):.1f} %"
        print(f"  {model:15s} {ips:8.1f} images/s{overhead}")


if __name__ == "__main__":
    main()
