"""Peak extra memory and time of the FCOS target ops at COCO scale (and the A4 ratios).

Run: ``python benchmarks/memory_matching.py`` (CPU; add ``--device cuda`` on a GPU).

Each measurement runs in a fresh subprocess that builds its inputs, makes one warm-up call,
returns freed memory to the OS (``malloc_trim``), resets the peak resident set size
(``/proc/self/clear_refs``), makes one more call and reads the new peak (``VmHWM``). The
reported *extra* memory is that peak minus the resident size just before the call: what
the call itself needed on top of its inputs. On CUDA the peak comes from
``torch.cuda.max_memory_allocated``. Timings are medians of a few calls, in one thread
unless ``--threads`` says otherwise (the development machine is shared, so a second
thread mostly measures contention). The A4 ratios alternate detops and the seed-style
loop in one process (each round: one seed-style call, then ten detops calls) and report
wall-clock medians and, with one CPU thread, medians of the thread's CPU time (which a
busy machine's preemption does not inflate).

Scales (as in the issue):

* A4: B=16, 224x224, strides 8/16/32, 40 GT rows per image of which 4..12 are real.
* COCO: B=16, 800x1344, strides 8..128 (five levels), 100 GT rows per image, all real
  (the worst case for the working set).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import time

SCALES = {
    "A4": dict(height=224, width=224, strides={"p3": 8, "p4": 16, "p5": 32}, rows=40, real=(4, 12)),
    "COCO": dict(
        height=800,
        width=1344,
        strides={"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128},
        rows=100,
        real=(100, 100),
    ),
}


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _calls(scale: str, device: str, threads: int) -> dict:
    """The calls measured at ``scale``, by kind: detops' ``match`` and ``targets`` and the
    seed-style loops ``seed_match`` and ``seed_targets``, inputs built once."""
    import torch

    from detops.bench.cases.targets import (
        benchmark_inputs,
        detops_targets,
        seed_style_match,
        seed_style_targets,
    )
    from detops.matching import fcos_match_locations_to_gt

    torch.set_num_threads(threads)
    spec = SCALES[scale]
    locations, gt, _, _ = benchmark_inputs(
        spec["height"], spec["width"], spec["strides"], spec["rows"], spec["real"], device
    )
    strides = spec["strides"]
    return {
        "match": lambda: fcos_match_locations_to_gt(locations, strides, gt),
        "targets": lambda: detops_targets(locations, strides, gt),
        "seed_match": lambda: [seed_style_match(locations, strides, image) for image in gt],
        "seed_targets": lambda: seed_style_targets(locations, strides, gt),
    }


def _child(kind: str, scale: str, device: str, threads: int, repeats: int) -> dict:
    import torch

    fn = _calls(scale, device, threads)[kind]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()  # warm-up: caches, lazy initialisation
    sync()
    result = {"kind": kind, "scale": scale, "device": device, "threads": threads}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = fn()
        sync()
        result["extra_bytes"] = torch.cuda.max_memory_allocated() - before
        result["method"] = "torch.cuda.max_memory_allocated"
    else:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        before = _status("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # reset the peak RSS (VmHWM) to the current RSS
            method = "VmHWM after clear_refs"
        except OSError:
            method = "ru_maxrss (not reset: an upper bound of earlier peaks)"
        out = fn()
        result["extra_bytes"] = _status("VmHWM") - before
        result["method"] = method
    del out
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    result["median_s"] = statistics.median(times)
    result["min_s"] = min(times)
    result["repeats"] = repeats
    return result


def _run(kind, scale, device, threads, repeats) -> dict:
    command = [sys.executable, __file__, "--child", kind, scale, device, str(threads), str(repeats)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _interleaved_ratio(scale, device, threads, rounds, block=10) -> dict:
    """Medians of detops and the seed-style loop measured alternately in one process."""
    import torch

    calls = _calls(scale, device, threads)
    pairs = {
        "match": (calls["match"], calls["seed_match"]),
        "targets": (calls["targets"], calls["seed_targets"]),
    }
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    clocks = {"wall": time.perf_counter}
    if device != "cuda" and threads == 1:
        clocks["cpu"] = time.thread_time  # this thread's CPU time: immune to preemption
    report = {}
    for name, (ours, peer) in pairs.items():
        ours(), peer()
        times = {(clock, label): [] for clock in clocks for label in ("detops", "peer")}
        for _ in range(rounds):
            # Each round: one seed-style call, then a block of detops calls (as a
            # benchmark loop would run them; a single call right after the long seed
            # loop mostly measures cold caches).
            for label, fn, calls in (("peer", peer, 1), ("detops", ours, block)):
                for _ in range(calls):
                    start = {clock: read() for clock, read in clocks.items()}
                    fn()
                    sync()
                    for clock, read in clocks.items():
                        times[clock, label].append(read() - start[clock])
        for clock in clocks:
            ours_t, peer_t = times[clock, "detops"], times[clock, "peer"]
            report[name, clock] = {
                "detops_median_ms": statistics.median(ours_t) * 1e3,
                "peer_median_ms": statistics.median(peer_t) * 1e3,
                "ratio_median": statistics.median(peer_t) / statistics.median(ours_t),
                "ratio_min": min(peer_t) / min(ours_t),
                "rounds": rounds,
            }
    return report


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, scale, device, threads, repeats = sys.argv[2:7]
        print(json.dumps(_child(kind, scale, device, int(threads), int(repeats))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30, help="A4 ratio rounds")
    parser.add_argument("--seed-coco", action="store_true", help="also time the seed at COCO")
    args = parser.parse_args()
    print(f"device {args.device}, {args.threads} thread(s)")
    for scale, kind in (("COCO", "match"), ("COCO", "targets")) + (
        (("COCO", "seed_match"),) if args.seed_coco else ()
    ):
        r = _run(kind, scale, args.device, args.threads, 3)
        print(
            f"{scale:5s} {kind:12s} peak extra memory {r['extra_bytes'] / 2**20:8.1f} MiB "
            f"({r['method']}); time median {r['median_s'] * 1e3:8.1f} ms, "
            f"min {r['min_s'] * 1e3:8.1f} ms over {r['repeats']} calls"
        )
    report = _interleaved_ratio("A4", args.device, args.threads, args.rounds)
    for (name, clock), r in report.items():
        print(
            f"A4    {name:8s} {clock:4s} detops median {r['detops_median_ms']:7.3f} ms, seed-style "
            f"median {r['peer_median_ms']:8.2f} ms: ratio {r['ratio_median']:5.1f}x "
            f"(of minima {r['ratio_min']:5.1f}x, {r['rounds']} rounds)"
        )


if __name__ == "__main__":
    main()
