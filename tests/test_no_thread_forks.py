"""The CPU NMS ops, the focal loss, fcos_loss and the A4-size target and decoding ops never
fork torch's OpenMP threads.

On a loaded machine every fork/join of torch's intra-op threads can wait milliseconds for a
thread the OS has descheduled; these ops are built to run serially in the calling thread
(see ``detops._serial``). A small shim library, preloaded into a child process, counts the
calls of libgomp's ``GOMP_parallel``. A control op that does fork proves the count works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
typedef void (*parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
static long forks = 0;
void GOMP_parallel(void (*fn)(void *), void *data, unsigned n, unsigned flags) {
    static parallel_fn real = 0;
    if (!real) real = (parallel_fn)dlsym(RTLD_NEXT, "GOMP_parallel");
    __atomic_add_fetch(&forks, 1, __ATOMIC_RELAXED);
    real(fn, data, n, flags);
}
long detops_test_forks(void) { return forks; }
"""

CHILD = textwrap.dedent(
    """
    import ctypes, json, sys
    import torch
    import detops
    from detops.bench.cases.nms import random_detections

    shim = ctypes.CDLL(sys.argv[1])
    shim.detops_test_forks.restype = ctypes.c_long

    def forks(call):
        call()  # warm-up: first calls may build cached constants
        before = shim.detops_test_forks()
        call()
        return shim.detops_test_forks() - before

    counts = {"control: exp of 1M elements": forks(lambda: torch.rand(1 << 20).exp())}
    for n in (1000, 20000):
        boxes, scores, classes = random_detections(n, seed=n)
        counts[f"nms {n}"] = forks(lambda: detops.nms(boxes, scores, 0.5))
        counts[f"class_spec_nms {n}"] = forks(
            lambda: detops.class_spec_nms(boxes, scores, classes, 0.5)
        )
        counts[f"class_spec_nms {n}, 2 classes (mirrored at 1000)"] = forks(
            lambda: detops.class_spec_nms(boxes, scores, classes % 2, 0.5)
        )
    boxes, scores, classes = random_detections(1000, seed=1, batch=(16,))
    counts["batched_nms_per_image 16x1000"] = forks(
        lambda: detops.batched_nms_per_image(boxes, scores, classes, 0.5)
    )
    # Clustered boxes take other routes: the kernel, the rounds, the rest to the sparse path.
    from detops.bench.cases.nms import clustered_detections

    for n, per_object in ((1000, 50), (5000, 50), (20000, 50), (20000, 20)):
        boxes, scores, classes = clustered_detections(n, per_object=per_object)
        label = f"{n} clustered by {per_object}"
        counts[f"nms {label}"] = forks(lambda: detops.nms(boxes, scores, 0.5))
        counts[f"class_spec_nms {label}"] = forks(
            lambda: detops.class_spec_nms(boxes, scores, classes, 0.5)
        )
    # float16 and bfloat16 boxes take the sparse path (converted without a fork).
    for dtype in (torch.float16, torch.bfloat16):
        for kind, make in (("clustered", clustered_detections), ("scattered", random_detections)):
            boxes, scores, classes = make(20000)
            boxes, scores = boxes.to(dtype), scores.to(dtype)
            label = f"20000 {kind} {dtype}"
            counts[f"nms {label}"] = forks(lambda: detops.nms(boxes, scores, 0.5))
            counts[f"class_spec_nms {label}"] = forks(
                lambda: detops.class_spec_nms(boxes, scores, classes, 0.5)
            )
            counts[f"batched_nms_per_image 4x5000 {label}"] = forks(
                lambda: detops.batched_nms_per_image(
                    boxes.view(4, -1, 4), scores.view(4, -1), classes.view(4, -1), 0.5
                )
            )
    # Clusters among scattered boxes: rounds for the clusters, then the scattered rest
    # (18k boxes) to the sparse path (the cost model's "no" to the kernel, forced here).
    nms_module = sys.modules["detops.nms"]
    nms_module._kernel_is_cheaper = lambda *args, **kwargs: False
    subset, subsets = nms_module._sparse_subset, []
    nms_module._sparse_subset = lambda *args: subsets.append(len(args[-1])) or subset(*args)
    mixed = zip(clustered_detections(10000), random_detections(10000, seed=3))
    boxes, scores, classes = (torch.cat(p) for p in mixed)
    counts["class_spec_nms 20000 mixed, the rest to the sparse path"] = forks(
        lambda: detops.class_spec_nms(boxes, scores, classes, 0.5)
    )
    assert subsets and min(subsets) > 10000, f"not the route to the sparse path: {subsets}"
    parts = [clustered_detections(1000, seed=seed) for seed in range(16)]
    boxes, scores, classes = (torch.stack(p) for p in zip(*parts))
    counts["batched_nms_per_image 16x1000 clustered"] = forks(
        lambda: detops.batched_nms_per_image(boxes, scores, classes, 0.5)
    )
    logits = torch.randn(16, 4096, 80, generator=torch.Generator().manual_seed(0))
    targets = (torch.rand(16, 4096, 80, generator=torch.Generator().manual_seed(1)) < 0.01)
    targets = targets.float()
    counts["sigmoid_focal_loss 16x4096x80"] = forks(
        lambda: detops.sigmoid_focal_loss(logits, targets, reduction="sum")
    )
    # torch.autograd.grad, not .backward(): accumulating into .grad would fork (an add of
    # 5M values), and so would the test's own .sum() of a 5M-value loss
    leaf = logits.clone().requires_grad_()
    grad_output = torch.rand(16, 4096, 80, generator=torch.Generator().manual_seed(4))
    expanded = torch.ones(()).expand(16, 4096, 80)  # what .sum().backward() hands back

    def backward_of_none(gradient):
        loss = detops.sigmoid_focal_loss(leaf, targets, reduction="none")
        torch.autograd.grad(loss, leaf, gradient)

    counts["sigmoid_focal_loss none, backward of a [16, 4096, 80] gradient"] = forks(
        lambda: backward_of_none(grad_output)
    )
    counts["sigmoid_focal_loss none, backward of an expanded gradient"] = forks(
        lambda: backward_of_none(expanded)
    )
    # 40,000 positive entries: more than one chunk of them
    many = torch.randint(0, 3, (40000,), generator=torch.Generator().manual_seed(2))
    wide = torch.randn(40000, 3, generator=torch.Generator().manual_seed(3)).requires_grad_()

    def class_ids_step():
        loss = detops.sigmoid_focal_loss_from_class_ids(wide, many, reduction="sum")
        torch.autograd.grad(loss, wide)

    counts["sigmoid_focal_loss_from_class_ids, 40000 positives, forward and backward"] = forks(
        class_ids_step
    )
    from detops.bench.cases.losses import concat_levels, random_head_outputs
    from detops.bench.cases.targets import benchmark_inputs
    from detops.testing.inputs import A4_STRIDES

    locations, gt, flat_locations, flat_strides = benchmark_inputs(224, 224, A4_STRIDES, 40, (1, 8))
    matched = concat_levels(detops.fcos_match_locations_to_gt(locations, A4_STRIDES, gt))
    gt_deltas = detops.fcos_get_deltas_from_locations(flat_locations, matched, flat_strides)
    heads = [concat_levels(t) for t in random_head_outputs(locations, 16, 20, "cpu")]
    leaves = [t.requires_grad_() for t in heads]

    def loss_step():
        out, _ = detops.fcos_loss(*leaves, matched, gt_deltas, 150.0)
        torch.autograd.grad(list(out.values()), leaves)

    counts["fcos_loss A4 forward and backward"] = forks(loss_step)
    counts["fcos_get_deltas_from_locations A4"] = forks(
        lambda: detops.fcos_get_deltas_from_locations(flat_locations, matched, flat_strides)
    )
    counts["fcos_apply_deltas_to_locations A4"] = forks(
        lambda: detops.fcos_apply_deltas_to_locations(gt_deltas, flat_locations, flat_strides)
    )
    counts["fcos_make_centerness_targets A4"] = forks(
        lambda: detops.fcos_make_centerness_targets(gt_deltas)
    )
    print(json.dumps({"threads": torch.get_num_threads(), "forks": counts}))
    """
)


def _libgomp_in_use() -> bool:
    return any("libgomp" in p.name for p in (Path(torch.__file__).parent / "lib").iterdir())


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD of a libgomp shim: Linux")
@pytest.mark.skipif(not _libgomp_in_use(), reason="torch is not built with GNU OpenMP")
def test_cpu_nms_and_losses_never_fork_torch_threads(tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the counting shim")
    shim = tmp_path / "libcountforks.so"
    source = tmp_path / "countforks.c"
    source.write_text(SHIM)
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"], check=True
    )
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    result = subprocess.run(
        [sys.executable, str(script), str(shim)],
        env={**_child_env(), "LD_PRELOAD": str(shim)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if report["threads"] < 2:
        pytest.skip("torch runs 1 thread by default here: nothing can fork")
    counts = report["forks"]
    if counts.pop("control: exp of 1M elements") < 1:
        # This torch does not fork through libgomp's GOMP_parallel: the count is blind here.
        pytest.skip("the shim saw no fork of an op that forks (exp of 1M elements)")
    assert counts == dict.fromkeys(counts, 0)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # the child uses torch's default, as users do
    return env
