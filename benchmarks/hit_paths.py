"""The hit path's coverage, A/B in one process: transformer models with runners for lists of
tensors and keyword arguments and remembered gathers ("on", the default) against the same
process with those switched off ("off": such calls take dispatch's full path, and each gather
builds its cache key), interleaved round after round.

    python benchmarks/hit_paths.py [--rounds 15] [--out benchmarks/results/hit_paths.json]
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
import run as R  # noqa: E402


class _NoMemo(dict):
    def __setitem__(self, key, value):
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", default=os.path.join(HERE, "results", "hit_paths.json"))
    args = p.parse_args()

    import torch_mlir_eager as tme
    from torch_mlir_eager import TorchMLIRTensor, buffers, runners

    fast_key, gathers = runners.fast_key, buffers._GATHERS

    def simple_only(func, a, kwargs, scalar_positions):  # the hit path as it was before
        if kwargs or any(type(x) in (list, tuple) and x and type(x[0]) is TorchMLIRTensor for x in a):
            return None
        return fast_key(func, a, kwargs, scalar_positions)

    def switch(on):
        runners.fast_key = fast_key if on else simple_only
        buffers._GATHERS = gathers if on else _NoMemo()

    torch.manual_seed(0)
    cases = {"transformer block (hidden 128, 4 heads, seq 64)": (R.TransformerBlock(), {"x": torch.randn(1, 64, 128)})}
    try:
        cases.update(R._hf_models())
    except ImportError:
        print("(transformers not installed: pip install -e '.[bench]' for the HF models)", file=sys.stderr)
    report = {"machine": bu.machine_description(), "rounds": args.rounds, "models": {}}
    print(f"{'model':50s} {'on (ms)':>9s} {'off (ms)':>9s} {'on/off':>7s}  IQR on / off")
    for name, (model, inputs) in cases.items():
        model = model.eval()
        dev_model = tme.to_device(copy.deepcopy(model)).eval()
        dev_inputs = {k: TorchMLIRTensor(v) for k, v in inputs.items()}
        with torch.no_grad():
            want = R._first_tensor(model(**inputs))

            def forward(on):
                switch(on)
                return R._first_tensor(dev_model(**dev_inputs))._host()

            for on in (True, False):
                torch.testing.assert_close(forward(on), want, atol=1e-4, rtol=1e-4)
            samples = bu.interleaved({"on": lambda: forward(True), "off": lambda: forward(False)}, 3, args.rounds,
                                     warmup=2)
        switch(True)
        med = {k: bu.median(v) * 1e3 for k, v in samples.items()}
        iqr = {k: [t * 1e3 for t in bu.spread(v)] for k, v in samples.items()}
        report["models"][name] = {"on_ms": med["on"], "off_ms": med["off"], "ratio": med["on"] / med["off"],
                                  "iqr_on_ms": iqr["on"], "iqr_off_ms": iqr["off"]}
        print(f"{name:50s} {med['on']:9.2f} {med['off']:9.2f} {med['on'] / med['off']:7.2f}  "
              f"{iqr['on'][0]:.2f}-{iqr['on'][1]:.2f} / {iqr['off'][0]:.2f}-{iqr['off'][1]:.2f}", flush=True)
    if args.out:
        bu.write_json(args.out, report)


if __name__ == "__main__":
    main()
