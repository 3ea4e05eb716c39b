"""The device queue (torch_mlir_eager/queue.py): kernels issued asynchronously, against each one
waited for as it is issued (`Queue.synchronous`, what `TORCH_MLIR_EAGER_SYNC=1` sets), in one
process.

    python benchmarks/device_queue.py [--rounds 15] [--batches 1,8] [--out benchmarks/results/device_queue.json]

ResNet18 eval at 224, the same kernels both ways: per round, in a rotating order, native
PyTorch, the eager forward with the queue, and the eager forward waiting for each kernel. Each
is timed after 0.3 s idle (a request arriving at an idle process) and back to back (one untimed
forward, then 3 timed; a training loop or a loaded server), as `run.py`'s ResNet18 rows. Every
eager forward ends with its logits read on the host (`.cpu()`), so the queue's work is timed.
The table gives medians and the interquartile range; the JSON has every sample.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import bench_util as bu  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--out", default=os.path.join(HERE, "results", "queue.json"))
    args = p.parse_args()

    import torch_mlir_eager as tme
    from torch_mlir_eager import TorchMLIRTensor
    from torch_mlir_eager.models import resnet18
    from torch_mlir_eager.queue import Queue

    torch.manual_seed(0)
    model = resnet18().eval()
    native = copy.deepcopy(model)
    tme.to_device(model)
    report = {"machine": bu.machine_description(), "rounds": args.rounds, "rows": []}
    print(f"{'ResNet18 eval 224':<28} {'native ms':>10} {'queue ms':>18} {'wait each ms':>18} {'queue / wait':>13}")
    for batch in [int(b) for b in args.batches.split(",")]:
        x = torch.randn(batch, 3, 224, 224)
        xd = TorchMLIRTensor(x)

        def eager(synchronous):
            def forward():
                Queue.synchronous = synchronous
                try:
                    return model(xd).cpu()
                finally:
                    Queue.synchronous = False
            return forward

        with torch.no_grad():
            got = eager(False)()
            diff = (got - native(x)).abs().max().item()
            assert diff < 1e-3, diff
            options = {"native": lambda: native(x), "queue": eager(False), "wait each": eager(True)}
            for mode, kw in (("after idle", dict(inner=1, settle=0.3)),
                             ("steady", dict(inner=3, settle=0.3, lead=1))):
                samples = bu.interleaved(options, rounds=args.rounds, warmup=1, **kw)
                med = {k: bu.median(v) for k, v in samples.items()}
                iqr = {k: bu.spread(v) for k, v in samples.items()}
                row = {"batch": batch, "mode": mode, "median_s": med, "iqr_s": iqr, "samples_s": samples,
                       "queue_over_wait": med["queue"] / med["wait each"],
                       "queue_over_native": med["queue"] / med["native"],
                       "wait_over_native": med["wait each"] / med["native"]}
                report["rows"].append(row)
                ms = 1e3
                print(f"{f'batch {batch}, {mode}':<28} {med['native'] * ms:>10.1f} "
                      f"{med['queue'] * ms:>7.1f} ({row['queue_over_native']:.2f}x) "
                      f"{med['wait each'] * ms:>9.1f} ({row['wait_over_native']:.2f}x) {row['queue_over_wait']:>12.2f}x")
    bu.write_json(args.out, report)


if __name__ == "__main__":
    main()
