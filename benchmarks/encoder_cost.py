"""What the aligned Xception costs against the ResNet-18 as MB-DCNN's networks, on the CPU, in one run:
parameters, and seconds per image of a training step (forward + backward) and of inference.

    OMP_NUM_THREADS=1 python -m benchmarks.encoder_cost [--size 128] [--batch 4] [--repeats 5]

The networks (each built with ``create_model``, as the recipe builds them):

- coarse-SN of ``configs/ph2_mbdcnn.yaml``: DeepLabv3+ on a ResNet-18 layout of width 16, ASPP 48;
- DeepLabv3+ on ResNet-18 (width 64, ASPP and decoder 256): the usual ResNet size;
- coarse-SN of ``configs/ph2_mbdcnn_paper.yaml``: DeepLabv3+ on Xception-65 (ASPP and decoder 256);
- DeepLabv3+ on Xception-65 at width 8 (a quarter of the channels), ASPP 48: an Xception for the CPU;
- the two mask-CNs (4 input channels): ResNet-18 width 24, and Xception-65 at output stride 16.

Each repeat times every network once on the same batch (interleaved, so that the machine's load
moves all alike); the table gives the median over the repeats divided by the batch, and the ratio
to the first network's training step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from medsight.models import create_model
from medsight.report import format_table

SMALL_HEAD = {"aspp_channels": 48, "decoder_channels": 48, "shortcut_channels": 24}
NETWORKS = {
    "coarse-SN, ResNet-18 w16 (ph2_mbdcnn)": ("deeplabv3plus", 3, {"encoder": "resnet18",
                                                                   "encoder_options": {"width": 16}, **SMALL_HEAD}),
    "DeepLabv3+, ResNet-18 w64": ("deeplabv3plus", 3, {"encoder": "resnet18"}),
    "coarse-SN, Xception-65 (ph2_mbdcnn_paper)": ("deeplabv3plus", 3, {"encoder": "xception"}),
    "DeepLabv3+, Xception-65 w8": ("deeplabv3plus", 3, {"encoder": "xception", "encoder_options": {"width": 8},
                                                        **SMALL_HEAD}),
    "mask-CN, ResNet-18 w24 (ph2_mbdcnn)": ("resnet18", 4, {"width": 24}),
    "mask-CN, Xception-65 OS16 (ph2_mbdcnn_paper)": ("xception", 4, {"output_stride": 16}),
}


def step_seconds(model: torch.nn.Module, x: torch.Tensor, train: bool) -> float:
    model.train(train)
    start = time.perf_counter()
    if train:
        model.zero_grad(set_to_none=True)
        model(x).float().square().mean().backward()
    else:
        with torch.no_grad():
            model(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    models = {name: (create_model(model, in_channels=c, num_classes=1 if model == "deeplabv3plus" else 2, **options),
                     torch.randn(args.batch, c, args.size, args.size))
              for name, (model, c, options) in NETWORKS.items()}
    times: dict[str, dict[str, list[float]]] = {name: {"train": [], "infer": []} for name in models}
    for model, x in models.values():  # one warm-up step each
        step_seconds(model, x, True)
    for _ in range(args.repeats):
        for name, (model, x) in models.items():
            for mode in ("train", "infer"):
                times[name][mode].append(step_seconds(model, x, mode == "train") / args.batch)
    first = statistics.median(times[next(iter(models))]["train"])
    rows = {name: {"parameters (M)": sum(p.numel() for p in model.parameters()) / 1e6,
                   "train s/image": statistics.median(times[name]["train"]),
                   "inference s/image": statistics.median(times[name]["infer"]),
                   "train x first": statistics.median(times[name]["train"]) / first}
            for name, (model, _) in models.items()}
    print(f"{args.size} px, batch {args.batch}, median of {args.repeats} repeats, "
          f"{torch.get_num_threads()} thread(s):\n")
    print(format_table(rows, style="markdown", percent=False, digits=3, index_name="network"))


if __name__ == "__main__":
    main()
