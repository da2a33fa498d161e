"""Compiled (inductor) vs eager FCOS training step, interleaved.

One step: backbone, targets, loss, backward and an SGD step. Prints the time of the first
compiled step (compile + run) and the median and IQR of each side.

    python benchmarks/compile_training_step.py        # env B, S, N: batch, image size, steps
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from detops.nn import FCOS


def synthetic_batch(batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator)
    gt = torch.full((batch, 40, 5), -1.0)
    for b in range(batch):
        for j in range(int(torch.randint(1, 8, (1,), generator=generator))):
            x1, y1 = torch.randint(0, size - 40, (2,), generator=generator).tolist()
            w, h = torch.randint(8, 40, (2,), generator=generator).tolist()
            gt[b, j] = torch.tensor([x1, y1, x1 + w, y1 + h, j % 4], dtype=torch.float32)
    return images, gt


def model_and_optimizer() -> tuple[FCOS, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = FCOS(num_classes=4, fpn_channels=64, stem_channels=[64]).train()
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q25, median, q75 = statistics.quantiles(values, n=4, method="inclusive")
    return q25, median, q75


def main() -> None:
    batch, size = int(os.environ.get("B", 8)), int(os.environ.get("S", 128))
    steps = int(os.environ.get("N", 10))
    images, gt = synthetic_batch(batch, size)
    eager_model, eager_optimizer = model_and_optimizer()
    compiled_model, compiled_optimizer = model_and_optimizer()
    compiled_forward = torch.compile(compiled_model)
    sides = {
        "eager": (eager_model, eager_optimizer, eager_model),
        "compiled": (compiled_model, compiled_optimizer, compiled_forward),
    }

    def step(name: str) -> None:
        model, optimizer, forward = sides[name]
        optimizer.zero_grad(set_to_none=True)
        sum(forward(images, gt).values()).backward()
        optimizer.step()

    start = time.perf_counter()
    step("compiled")
    print(f"first compiled step (compile + run): {time.perf_counter() - start:.1f} s")
    step("eager")
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for i in range(steps):
        for name in ("eager", "compiled") if i % 2 == 0 else ("compiled", "eager"):
            start = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - start)
    print(f"B={batch} S={size} threads={torch.get_num_threads()} load={os.getloadavg()[0]:.2f}")
    for name, values in times.items():
        q25, median, q75 = (1e3 * v for v in quartiles(values))
        print(f"{name:9s} median {median:.1f} ms  IQR [{q25:.1f}, {q75:.1f}]")
    ratio = statistics.median(times["eager"]) / statistics.median(times["compiled"])
    print(f"speed-up eager/compiled: {ratio:.2f}x")


if __name__ == "__main__":
    main()
