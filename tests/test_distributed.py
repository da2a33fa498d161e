"""DDP on CPU: 2 gloo ranks x batch b equal 1 process x batch 2b; sharded evaluation.

The ranks are two subprocesses on localhost (a free port, gloo), started by the test,
bounded by a timeout and killed on failure. BatchNorm in the backbone would make the two
runs differ by their batch statistics, so both use frozen BatchNorm (torchvision's
FrozenBatchNorm2d with the same statistics): the equivalence then covers the loss, its
normalizer and DDP's gradient averaging.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import detops
from detops import distributed

STEPS = 3
IMAGES = 4  # the global batch: 2 per rank
EVAL_IMAGES = 5  # not divisible by 2: DistributedSampler pads one shard

SETUP = textwrap.dedent(
    """
    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d
    from detops.nn import FCOS


    def frozen(module):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.BatchNorm2d):
                replacement = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                replacement.running_mean.copy_(child.running_mean)
                replacement.running_var.copy_(child.running_var)
                replacement.weight.copy_(child.weight.detach())
                replacement.bias.copy_(child.bias.detach())
                setattr(module, name, replacement)
            else:
                frozen(child)
        return module


    def make_model():
        torch.manual_seed(0)
        model = frozen(FCOS(num_classes=3, fpn_channels=16, stem_channels=[16], score_thresh=0.05))
        # Non-trivial BN statistics, the same in every process.
        generator = torch.Generator().manual_seed(1)
        for buffer_name, buffer in model.named_buffers():
            if buffer_name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
        return model


    def make_data(count):
        generator = torch.Generator().manual_seed(2)
        images = torch.randn(count, 3, 64, 64, generator=generator)
        gt = torch.full((count, 6, 5), -1.0)
        for b in range(count):
            for j in range(1 + b % 3):
                x1, y1 = torch.randint(0, 30, (2,), generator=generator).tolist()
                w, h = torch.randint(10, 30, (2,), generator=generator).tolist()
                gt[b, j] = torch.tensor([x1, y1, x1 + w, y1 + h, (b + j) % 3], dtype=torch.float)
        return images, gt


    def train(model, images, gt, steps):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        totals = []
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            total = sum(model(images, gt).values())
            total.backward()
            optimizer.step()
            totals.append(total.detach())
        return totals
    """
)

WORKER = SETUP + textwrap.dedent(
    """
    import sys
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    from detops import distributed
    from detops.training import predict_detections

    out_dir, steps, count, eval_count = sys.argv[1], *map(int, sys.argv[2:])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = make_model()
    images, gt = make_data(count)
    per_rank = count // world
    shard = slice(rank * per_rank, (rank + 1) * per_rank)
    ddp = DistributedDataParallel(model)
    totals = train(ddp, images[shard], gt[shard], steps)
    mean_totals = torch.stack(totals)
    dist.all_reduce(mean_totals)
    mean_totals /= world

    eval_images, eval_gt = make_data(eval_count)
    dataset = TensorDataset(eval_images, eval_gt)
    sampler = DistributedSampler(dataset, shuffle=False)
    indices = list(sampler)
    loader = DataLoader(dataset, batch_size=1, sampler=sampler)
    detections, _ = predict_detections(model, loader)
    gathered = distributed.gather_in_order(detections, indices)
    if rank == 0:
        torch.save(
            {"totals": mean_totals, "state": model.state_dict(), "detections": gathered},
            f"{out_dir}/rank0.pt",
        )
    dist.destroy_process_group()
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(tmp_path: Path, worker: str = WORKER, world: int = 2, timeout: float = 150.0) -> dict:
    script = tmp_path / "worker.py"
    script.write_text(worker)
    port = free_port()
    processes = []
    for rank in range(world):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        args = [str(tmp_path), str(STEPS), str(IMAGES), str(EVAL_IMAGES)]
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    finally:
        for p in processes:  # a failed or hung rank must not outlive the test
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, output in zip(processes, outputs, strict=True):
        assert p.returncode == 0, f"a rank exited with {p.returncode}:\n{output[-3000:]}"
    return torch.load(tmp_path / "rank0.pt", weights_only=True)


def _setup_namespace() -> dict:
    namespace: dict = {}
    exec(SETUP, namespace)  # the same model, data and loop as the workers
    return namespace


def single_process_training() -> dict:
    namespace = _setup_namespace()
    model = namespace["make_model"]()
    images, gt = namespace["make_data"](IMAGES)
    totals = namespace["train"](model, images, gt, STEPS)
    return {"totals": torch.stack(totals), "state": model.state_dict()}


def single_process_detections(state: dict) -> list:
    """One process evaluating every image in order, with the ranks' final weights."""
    from detops.training import predict_detections

    namespace = _setup_namespace()
    model = namespace["make_model"]()
    model.load_state_dict(state)
    eval_images, eval_gt = namespace["make_data"](EVAL_IMAGES)
    # Batch size 1 on both sides: a convolution's rounding can depend on which images share
    # its batch (measured: 2.4e-7 on one box coordinate), and sharding changes the batches.
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(eval_images, eval_gt), batch_size=1
    )
    return predict_detections(model, loader)[0]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_ranks_equal_one_process_with_the_global_batch_and_sharded_eval_is_exact(tmp_path):
    ranks = run_ranks(tmp_path)
    alone = single_process_training()
    # Losses (averaged over ranks) and every parameter and buffer after the steps: the
    # normalizer sees the global batch, DDP averages the gradients.
    torch.testing.assert_close(ranks["totals"], alone["totals"], rtol=1e-5, atol=1e-6)
    assert ranks["state"].keys() == alone["state"].keys()
    for name, value in alone["state"].items():
        torch.testing.assert_close(ranks["state"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    # Sharded evaluation with the same weights: the gathered detections are one process's,
    # image for image (the padded duplicate dropped), so any metric from them is the same.
    expected_detections = single_process_detections(ranks["state"])
    assert sum(len(d["scores"]) for d in expected_detections) > 0, "no detections to compare"
    assert len(ranks["detections"]) == EVAL_IMAGES
    for gathered, expected in zip(ranks["detections"], expected_detections, strict=True):
        assert gathered.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(gathered[key], expected[key], rtol=0, atol=0)


def test_without_a_process_group_the_helpers_are_local():
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    matched = torch.full((2, 7, 5), -1.0)
    matched[0, :3, 4] = 1.0
    matched[1, 5, 4] = 0.0
    per_image = distributed.global_positives_per_image(matched)
    assert per_image.dtype == torch.float64 and float(per_image) == 2.0
    assert distributed.gather_in_order(["b", "a", "c", "a2"], [1, 0, 2, 0]) == ["a", "b", "c"]


def test_positives_per_image_replaces_the_local_count_in_fcos_loss():
    generator = torch.Generator().manual_seed(0)
    cls, box, ctr = (torch.randn(2, 6, c, generator=generator) for c in (3, 4, 1))
    matched = torch.full((2, 6, 5), -1.0)
    matched[0, 0] = torch.tensor([0.0, 0.0, 8.0, 8.0, 1.0])
    deltas = torch.full((2, 6, 4), -1.0)
    deltas[0, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    local, local_norm = detops.fcos_loss(cls, box, ctr, matched, deltas, 10.0)
    # 1 positive in 2 images: positives_per_image 0.5 is the same as the local count
    same, same_norm = detops.fcos_loss(
        cls, box, ctr, matched, deltas, 10.0, positives_per_image=torch.tensor(0.5)
    )
    torch.testing.assert_close(same_norm, local_norm)
    torch.testing.assert_close(same, local)
    other, other_norm = detops.fcos_loss(
        cls, box, ctr, matched, deltas, 10.0, positives_per_image=torch.tensor(3.0)
    )
    assert float(other_norm) == pytest.approx(0.9 * 10.0 + 0.1 * 3.0)
    assert float(other["loss_cls"]) < float(local["loss_cls"])
    with pytest.raises(ValueError, match="fcos_loss: positives_per_image must be a 0-d"):
        detops.fcos_loss(cls, box, ctr, matched, deltas, 10.0, positives_per_image=torch.ones(2))


TRAIN_WORKER = SETUP + textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    from detops.training import train_detector

    out_dir = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = make_model()
    images, gt = make_data(8)
    dataset = TensorDataset(images, gt)
    loader = DataLoader(dataset, batch_size=2, sampler=DistributedSampler(dataset, seed=0))
    result = train_detector(
        model,
        loader,
        iterations=5,
        lr=0.01,
        checkpoint_path=f"{out_dir}/checkpoint.pt",
        checkpoint_every=2,
        loss_curve_path=f"{out_dir}/loss_curve_rank{rank}.png",
        progress=False,
    )
    with open(f"{out_dir}/history_rank{rank}.json", "w") as handle:
        json.dump(result.history, handle)
    # Resume on every rank: a fresh model picks up the finished run's checkpoint.
    again = make_model()
    resumed = train_detector(
        again, loader, iterations=5, checkpoint_path=f"{out_dir}/checkpoint.pt", progress=False
    )
    same = all(
        torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values())
    )
    with open(f"{out_dir}/resumed_rank{rank}.json", "w") as handle:
        json.dump({"resumed_from": resumed.resumed_from, "same_weights": same}, handle)
    if rank == 0:
        torch.save({"state": model.state_dict()}, f"{out_dir}/rank0.pt")
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_train_detector_under_ddp_logs_global_losses_only_rank_0_writes_all_resume(tmp_path):
    import json

    from detops.training import load_checkpoint

    ranks = run_ranks(tmp_path, TRAIN_WORKER)
    histories = [json.loads((tmp_path / f"history_rank{r}.json").read_text()) for r in (0, 1)]
    assert histories[0] == histories[1], "every rank records the mean over ranks"
    assert len(histories[0]["total"]) == 5
    assert (tmp_path / "loss_curve_rank0.png").exists()
    assert not (tmp_path / "loss_curve_rank1.png").exists()
    for r in (0, 1):  # every rank resumed from rank 0's checkpoint with its weights
        resumed = json.loads((tmp_path / f"resumed_rank{r}.json").read_text())
        assert resumed == {"resumed_from": 5, "same_weights": True}
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["iteration"] == 5
    for name, value in checkpoint["model"].items():  # rank 0's weights, not DDP-prefixed
        torch.testing.assert_close(value, ranks["state"][name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_torchrun_train_command_trains_on_two_processes(tmp_path):
    import json

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        "-m",
        "detops",
        "train",
        "--data=synthetic",
        f"--data-dir={tmp_path / 'data'}",
        "--num-train=16",
        "--num-val=6",
        "--image-size=64",
        "--batch-size=4",
        "--iterations=3",
        f"--output-dir={tmp_path / 'run'}",
        "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("detops train: 16 train / 6 val images") == 1, "rank 0 only"
    assert "4 per process" in done.stdout and "2 processes" in done.stdout
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["iterations"] == 3
    assert (tmp_path / "run" / "checkpoint.pt").exists()
