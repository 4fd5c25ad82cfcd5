"""How fast the released hippocampus model segments a scan on the CPU, model load included.

One process (``--threads`` torch threads): import volmae's inference, read the shipped weights
(``open_model(bundle="hippocampus")``), then segment ``--cases`` held-out MRI of MSD Task04 one by one with
``volmae-infer``'s defaults (Gaussian sliding window, overlap 0.5, no test-time flips), writing each label map.
Prints the import, load and per-scan seconds, and the first scan with the load against the 2 s target (a ratio:
under 1 meets it). The whole command, interpreter start included, is timed with ``farm-bench`` (see
``benchmarks/results/infer_released_cpu.md``).

Usage: python benchmarks/infer_released.py --threads 2 --cases 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

TARGET_S = 2.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--bundle", default="hippocampus")
    args = p.parse_args()
    t0 = time.perf_counter()
    import torch

    from volmae.artifact.bundles import open_model
    from volmae.data.datalist import load_msd_datalist, split_fold
    from volmae.data.paths import dataset_path
    from volmae.inference.infer import InferConfig, infer

    torch.set_num_threads(args.threads)
    imported = time.perf_counter() - t0
    data = dataset_path("msd_hippocampus")
    if data is None:
        raise SystemExit("needs ../shared/data/msd_hippocampus (or $VOLMAE_DATA)")
    scans = [it["image"] for it in split_fold(load_msd_datalist(data), 0)[1][: args.cases]]
    t1 = time.perf_counter()
    model = open_model(bundle=args.bundle)
    loaded = time.perf_counter() - t1
    seconds = []
    with tempfile.TemporaryDirectory() as out:
        for i, scan in enumerate(scans):
            t = time.perf_counter()
            infer(InferConfig([scan], output=f"{out}/{i}.nii.gz", device="cpu", quiet=True), model)
            seconds.append(time.perf_counter() - t)
    first = loaded + seconds[0]
    rest = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    print(f"threads {args.threads}, {len(scans)} held-out scans of fold 0, bundle {args.bundle}")
    print(f"import {imported:.2f} s, model load {loaded:.2f} s")
    print(f"per scan: first {seconds[0]:.2f} s, median of the others {rest:.2f} s, max {max(seconds):.2f} s")
    print(f"one scan with the model load: {first:.2f} s = {first / TARGET_S:.2f}x the {TARGET_S:.0f} s target")


if __name__ == "__main__":
    main()
