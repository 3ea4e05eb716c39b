#!/usr/bin/env python
"""Benchmarks for torch_mlir_eager, each figure a median over repeats with a ratio against a
baseline measured in the same process.

    python benchmarks/run.py                   # everything (about 5-10 minutes on 2 cores)
    python benchmarks/run.py --quick           # fewer repeats, slow items skipped
    python benchmarks/run.py --only overhead   # one item (comma-separated list allowed)

Items:
  overhead        cached 64-element add: TorchMLIRTensor vs native eager vs a minimal
                  pass-through __torch_dispatch__ wrapper subclass
  rss             resident memory growth over --rss-iters warm ResNet18 forwards
  resnet18        ResNet18 eval, batch 1 and 8, warm kernels, vs native eager (same threads):
                  a forward after 0.3 s idle, and back-to-back forwards (steady state)
  kernel_quality  sum of per-kernel times of the eager forward vs ResNet18 compiled whole by
                  torch-mlir + IREE (same flags, same driver)
  cold            first ResNet18 forward in a new process with the kernel cache off
  bounds          cached index_select and embedding with and without their index bounds
                  check, interleaved in one process
  models          warm forwards against native, interleaved in one process: a pre-norm
                  transformer block (hidden 128, 4 heads, sequence 64), nn.TransformerEncoderLayer
                  (eval, no_grad: PyTorch's fused path), and, with the `bench` extra (HF
                  transformers), tiny BERT, Llama, ViT and T5 built from configs (random weights)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import bench_util as bu  # noqa: E402

ITEMS = ["overhead", "bounds", "models", "rss", "resnet18", "kernel_quality", "cold"]
SLOW_ITEMS = {"kernel_quality", "cold"}


def row(name, value, unit, baseline_name=None, baseline_value=None, samples=None, **extra):
    r = {
        "name": name,
        "value": value,
        "unit": unit,
        "baseline": baseline_name,
        "baseline_value": baseline_value,
        "ratio": bu.ratio(value, baseline_value),
    }
    if samples is not None:
        r["samples"] = samples
    r.update(extra)
    return r


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- items


def bench_overhead(args, tme):
    from torch_mlir_eager import TorchMLIRTensor

    reps = args.repeats or (3 if args.quick else 7)
    inner = 500 if args.quick else 2000
    a, b = torch.randn(64), torch.randn(64)
    ea, eb = TorchMLIRTensor(a, device=args.device), TorchMLIRTensor(b, device=args.device)
    pa, pb = bu.PassThroughTensor(a), bu.PassThroughTensor(b)

    # Compile (or load) the kernel and check the result before timing.
    got = torch.add(ea, eb).cpu()
    ok = torch.allclose(got, a + b)
    tme.reset_stats()
    torch.add(ea, eb)
    s = tme.stats()
    cached = s.get("cache_hits", 0) >= 1 and s.get("kernels_compiled", 0) == 0

    t_native, s_native = bu.time_per_call(lambda: torch.add(a, b), inner, reps, warmup=100)
    t_pass, s_pass = bu.time_per_call(lambda: torch.add(pa, pb), inner, reps, warmup=100)
    t_eager, s_eager = bu.time_per_call(lambda: torch.add(ea, eb), inner, reps, warmup=100)
    us = 1e6
    return {
        "rows": [
            row("add 64xf32: native eager", t_native * us, "us", samples=[x * us for x in s_native]),
            row("add 64xf32: pass-through subclass", t_pass * us, "us", "native eager",
                t_native * us, samples=[x * us for x in s_pass]),
            row("add 64xf32: TorchMLIRTensor (cached)", t_eager * us, "us", "native eager",
                t_native * us, samples=[x * us for x in s_eager]),
            row("add 64xf32: TorchMLIRTensor (cached)", t_eager * us, "us",
                "pass-through subclass", t_pass * us),
        ],
        "details": {"repeats": reps, "calls_per_repeat": inner, "result_ok": ok,
                    "served_from_cache": cached, "device": args.device},
    }


def bench_bounds(args, tme):
    """What the bounds check costs a cached indexing op: the same call with the check and with
    it switched off, interleaved over many rounds (the machine's noise falls on both)."""
    from torch_mlir_eager import TorchMLIRTensor, bounds, runners

    rounds = args.repeats or (10 if args.quick else 30)
    inner = 100 if args.quick else 300
    weight, table = torch.randn(64, 32), torch.randn(1000, 64)
    idx = torch.randint(0, 64, (16,))
    tokens = torch.randint(0, 1000, (8, 32))
    dw, dt = TorchMLIRTensor(weight, device=args.device), TorchMLIRTensor(table, device=args.device)
    di, dk = TorchMLIRTensor(idx, device=args.device), TorchMLIRTensor(tokens, device=args.device)
    cases = {
        "index_select 64x32 by 16": (lambda: torch.index_select(dw, 0, di), torch.index_select(weight, 0, idx)),
        "embedding 1000x64 by 8x32": (lambda: torch.nn.functional.embedding(dk, dt),
                                      torch.nn.functional.embedding(tokens, table)),
    }
    real_violation, real_in_bounds = bounds.violation, runners.Runner._in_bounds
    rows, details = [], {"rounds": rounds, "calls_per_round": inner}
    us = 1e6
    for name, (call, want) in cases.items():
        assert torch.equal(call().cpu(), want)

        def unchecked(call=call):  # the check switched off, in the full path and in the runner
            bounds.violation = lambda kind, c: None
            runners.Runner._in_bounds = lambda self, args: True
            try:
                call()
            finally:
                bounds.violation, runners.Runner._in_bounds = real_violation, real_in_bounds

        samples = bu.interleaved({"checked": call, "unchecked": unchecked}, inner, rounds)
        med = {k: bu.median(v) * us for k, v in samples.items()}
        spread = {k: [x * us for x in bu.spread(v)] for k, v in samples.items()}
        extra = [bu.median([c - u for c, u in zip(samples["checked"], samples["unchecked"])]) * us]
        rows.append(row(f"{name}: with bounds check", med["checked"], "us", "without the check",
                        med["unchecked"], samples=[x * us for x in samples["checked"]],
                        spread_checked=spread["checked"], spread_unchecked=spread["unchecked"]))
        rows.append(row(f"{name}: cost of the check", extra[0], "us"))
        details[name] = {"median_us": med, "iqr_us": spread}
    return {"rows": rows, "details": details}


class TransformerBlock(torch.nn.Module):
    """A pre-norm transformer block: LayerNorm, attention through matmul and softmax, a GELU MLP."""

    def __init__(self, hidden=128, heads=4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(hidden), torch.nn.LayerNorm(hidden)
        self.qkv, self.proj = torch.nn.Linear(hidden, 3 * hidden), torch.nn.Linear(hidden, hidden)
        self.fc1, self.fc2 = torch.nn.Linear(hidden, 4 * hidden), torch.nn.Linear(4 * hidden, hidden)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


def _hf_models():
    """Tiny HF models from configs (random weights, no download): name -> (model, inputs)."""
    import transformers as tf

    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (1, 64))
    return {
        "HF BERT (2 layers, hidden 128)": (tf.BertModel(tf.BertConfig(
            vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=512)), {"input_ids": ids}),
        "HF Llama (2 layers, hidden 128)": (tf.LlamaModel(tf.LlamaConfig(
            vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)), {"input_ids": ids}),
        "HF ViT (2 layers, hidden 128, 64x64)": (tf.ViTModel(tf.ViTConfig(
            hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
            image_size=64, patch_size=8)), {"pixel_values": torch.randn(1, 3, 64, 64)}),
        "HF T5 (2+2 layers, d_model 128)": (tf.T5Model(tf.T5Config(
            vocab_size=1000, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4)),
            {"input_ids": ids, "decoder_input_ids": ids[:, :16]}),
    }


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


def bench_models(args, tme):
    from torch_mlir_eager import TorchMLIRTensor

    rounds = args.repeats or (5 if args.quick else 15)
    torch.manual_seed(0)
    cases = {
        "transformer block (hidden 128, 4 heads, seq 64)": (TransformerBlock(), {"x": torch.randn(1, 64, 128)}),
        "nn.TransformerEncoderLayer (eval, no_grad)": (
            torch.nn.TransformerEncoderLayer(128, 4, 512, batch_first=True), {"src": torch.randn(1, 64, 128)}),
    }
    try:
        cases.update(_hf_models())
    except ImportError:
        log("  (transformers not installed: pip install -e '.[bench]' for the HF models)")
    rows, details = [], {}
    ms = 1e3
    for name, (model, inputs) in cases.items():
        model = model.eval()
        dev_model = tme.to_device(copy.deepcopy(model), args.device).eval()
        dev_inputs = {k: TorchMLIRTensor(v, device=args.device) for k, v in inputs.items()}
        with torch.no_grad():
            want = _first_tensor(model(**inputs))
            tme.reset_stats()
            got = _first_tensor(dev_model(**dev_inputs))
            st = tme.stats()
            diff = (got.cpu() - want).abs().max().item()
            samples = bu.interleaved({"native": lambda: model(**inputs),
                                      "eager": lambda: _first_tensor(dev_model(**dev_inputs)).cpu()},
                                     3, rounds, warmup=2, settle=0.3)
        med = {k: bu.median(v) * ms for k, v in samples.items()}
        rows.append(row(f"{name}: TorchMLIRTensor (warm)", med["eager"], "ms", "native eager", med["native"],
                        samples=[v * ms for v in samples["eager"]],
                        iqr_eager=[v * ms for v in bu.spread(samples["eager"])],
                        iqr_native=[v * ms for v in bu.spread(samples["native"])]))
        details[name] = {"max_abs_diff_vs_native": diff, "first_forward_fallback_calls": st["fallback_calls"],
                         "fallbacks": st["fallbacks"], "decomposed": st.get("decomposed", {}),
                         "compiled_calls": st["compiled_calls"], "metadata_calls": st["metadata_calls"]}
        log(f"  {name}: {med['eager']:.2f} ms vs native {med['native']:.2f} ms; max abs diff {diff:.2g}; "
            f"{st['fallback_calls']} fallback calls")
    return {"rows": rows, "details": details}


def _models(batch, size, device, tme, seed=0):
    from torch_mlir_eager import TorchMLIRTensor
    from torch_mlir_eager.models import resnet18

    torch.manual_seed(seed)
    model = resnet18().eval()
    x = torch.randn(batch, 3, size, size)
    dev_model = tme.to_device(copy.deepcopy(model), device).eval()
    return model, dev_model, x, TorchMLIRTensor(x, device=device)


def _warm_up(dev_model, model, x, xd, tme, label):
    """First forward (compiles or loads kernels) with a correctness check."""
    tme.reset_stats()
    t0 = time.perf_counter()
    out = dev_model(xd)
    st = tme.stats()  # the forward alone, before the copy back to the host
    out = out.cpu()
    first = time.perf_counter() - t0
    ref = model(x)
    diff = (out - ref).abs().max().item()
    log(f"  {label}: first forward {first:.2f}s, {st.get('kernels_compiled', 0)} kernels "
        f"compiled, {st.get('fallback_calls', 0)} fallback calls, max abs diff {diff:.2g}")
    return {"first_forward_s": first, "max_abs_diff_vs_native": diff,
            "kernels_compiled": st.get("kernels_compiled"),
            "compiled_calls": st.get("compiled_calls"),
            "metadata_calls": st.get("metadata_calls"),
            "fallback_calls": st.get("fallback_calls"),
            "fallbacks": st.get("fallbacks")}


def bench_resnet18(args, tme):
    rows, details = [], {"threads": torch.get_num_threads(), "device": args.device}
    batches = [1] if args.quick else [1, 8]
    for batch in batches:
        reps = args.repeats or ((3 if args.quick else 10) if batch == 1 else 5)
        model, dev_model, x, xd = _models(batch, 224, args.device, tme)
        options = {"native": lambda m=model, v=x: m(v), "eager": lambda m=dev_model, v=xd: m(v).cpu()}
        with torch.no_grad():
            info = _warm_up(dev_model, model, x, xd, tme, f"batch {batch}")
            # a forward on its own, each option's turn starting from 0.3 s idle (a request
            # arriving at an idle process)
            samples = bu.interleaved(options, 1, reps, warmup=1, settle=0.3)
            # steady state: each turn runs one untimed forward, then times `steady` back to back
            # (a training loop, or a server under load)
            steady = 1 if batch > 1 else 3
            steady_samples = bu.interleaved(options, steady, reps, warmup=0, settle=0.3, lead=1)
        ms = 1e3
        for label, s, suffix in (("after idle", samples, ""), ("steady state", steady_samples, ", steady")):
            t_nat, t_eag = bu.median(s["native"]), bu.median(s["eager"])
            rows.append(row(f"ResNet18 eval b{batch} 224{suffix}: native eager", t_nat * ms, "ms",
                            samples=[v * ms for v in s["native"]]))
            rows.append(row(f"ResNet18 eval b{batch} 224{suffix}: TorchMLIRTensor (warm)", t_eag * ms, "ms",
                            "native eager", t_nat * ms, samples=[v * ms for v in s["eager"]],
                            iqr_eager=[v * ms for v in bu.spread(s["eager"])],
                            iqr_native=[v * ms for v in bu.spread(s["native"])]))
            log(f"  batch {batch}, {label}: {t_eag * ms:.1f} ms vs native {t_nat * ms:.1f} ms "
                f"({t_eag / t_nat:.2f}x)")
        info["repeats"] = reps
        info["steady_calls_per_turn"] = steady
        details[f"batch{batch}"] = info
        del model, dev_model, x, xd
        bu.collect()
    return {"rows": rows, "details": details}


def bench_rss(args, tme):
    iters = args.rss_iters if not args.quick else min(args.rss_iters, 50)
    chunks = 4 if iters >= 4 else 1
    per_chunk = max(1, iters // chunks)
    model, dev_model, x, xd = _models(1, args.rss_size, args.device, tme)

    def measure(fn):
        bu.collect()
        r0, m0 = bu.rss_bytes(), bu.maxrss_bytes()
        growth = []
        for _ in range(chunks):
            c0 = bu.rss_bytes()
            for _ in range(per_chunk):
                fn()
            bu.collect()
            growth.append(bu.rss_bytes() - c0)
        r1, m1 = bu.rss_bytes(), bu.maxrss_bytes()
        return r1 - r0, m1 - m0, growth

    with torch.no_grad():
        info = _warm_up(dev_model, model, x, xd, tme, f"rss (batch 1, {args.rss_size})")
        for _ in range(3):
            model(x)
            dev_model(xd).cpu()
        nat = measure(lambda: model(x))
        eag = measure(lambda: dev_model(xd).cpu())
    mib, kib = 1 / 2**20, 1 / 2**10
    n = per_chunk * chunks
    label = f"ResNet18 b1 {args.rss_size}, {n} forwards"
    nat_per = bu.median(nat[2]) / per_chunk * kib
    eag_per = bu.median(eag[2]) / per_chunk * kib
    rows = [
        row(f"{label}: RSS growth, native", nat[0] * mib, "MiB"),
        row(f"{label}: RSS growth, TorchMLIRTensor", eag[0] * mib, "MiB", "native eager",
            nat[0] * mib),
        row(f"{label}: peak RSS (ru_maxrss) growth, native", nat[1] * mib, "MiB"),
        row(f"{label}: peak RSS (ru_maxrss) growth, TorchMLIRTensor", eag[1] * mib, "MiB",
            "native eager", nat[1] * mib),
        row(f"{label}: RSS growth per forward, TorchMLIRTensor", eag_per, "KiB",
            "native eager", nat_per,
            samples=[g / per_chunk * kib for g in eag[2]]),
    ]
    info.update({"iterations": n, "chunks": chunks, "rss_end_MiB": bu.rss_bytes() * mib,
                 "peak_rss_end_MiB": bu.maxrss_bytes() * mib,
                 "native_chunk_growth_KiB": [g * kib for g in nat[2]],
                 "eager_chunk_growth_KiB": [g * kib for g in eag[2]]})
    return {"rows": rows, "details": info}


def bench_kernel_quality(args, tme):
    import whole_model

    reps = args.repeats or (3 if args.quick else 5)
    model, dev_model, x, xd = _models(1, 224, args.device, tme)
    rows, details = [], {"device": args.device, "iree_flags": whole_model.IREE_FLAGS}
    timing = getattr(tme, "kernel_timing", None)
    times_fn = getattr(tme, "kernel_times", None)

    with torch.no_grad():
        details.update(_warm_up(dev_model, model, x, xd, tme, "kernel quality (eager)"))
        t_nat, _ = bu.time_per_call(lambda: model(x), 1, reps, warmup=1)
        t_wall, _ = bu.time_per_call(lambda: dev_model(xd).cpu(), 1, reps, warmup=1)
        sums, counts = [], []
        if timing is not None and times_fn is not None:
            for _ in range(reps):
                with timing(True):
                    start = len(times_fn())
                    dev_model(xd).cpu()
                    ts = times_fn()[start:]
                sums.append(sum(t for _, t in ts))
                counts.append(len(ts))
            # Per-op breakdown of the last run (useful to see where time goes).
            by_op = {}
            for op, t in ts:
                s = by_op.setdefault(str(op), [0, 0.0])
                s[0] += 1
                s[1] += t
            details["last_run_by_op_ms"] = {
                k: {"calls": v[0], "ms": v[1] * 1e3}
                for k, v in sorted(by_op.items(), key=lambda kv: -kv[1][1])
            }
        else:
            details["error"] = "torch_mlir_eager.kernel_timing/kernel_times not available"

    log("  kernel quality: compiling ResNet18 whole (torch-mlir export + IREE llvm-cpu)...")
    vmfb, t_import, t_compile = whole_model.compile_whole(model, x)
    whole = whole_model.WholeModel(vmfb, args.device)
    xw = whole.to_device(x)
    with torch.no_grad():
        diff = (whole.run(x) - model(x)).abs().max().item()
    t_whole, s_whole = bu.time_per_call(lambda: whole(xw), 1, reps, warmup=2)
    log(f"  whole model: import {t_import:.1f}s, compile {t_compile:.1f}s, "
        f"{t_whole * 1e3:.1f} ms/forward, max abs diff vs native {diff:.2g}")
    details.update({"whole_import_s": t_import, "whole_compile_s": t_compile,
                    "whole_vmfb_bytes": len(vmfb), "whole_max_abs_diff_vs_native": diff,
                    "repeats": reps})

    ms = 1e3
    rows.append(row("ResNet18 b1 224: whole-model IREE (AOT)", t_whole * ms, "ms",
                    "native eager", t_nat * ms, samples=[v * ms for v in s_whole]))
    if sums:
        details["kernel_invocations_per_forward"] = counts
        rows.append(row("ResNet18 b1 224: sum of eager kernel times", bu.median(sums) * ms, "ms",
                        "whole-model IREE", t_whole * ms, samples=[v * ms for v in sums]))
    rows.append(row("ResNet18 b1 224: eager forward wall time", t_wall * ms, "ms",
                    "whole-model IREE", t_whole * ms))
    if sums:
        overhead = t_wall - bu.median(sums)
        rows.append(row("ResNet18 b1 224: eager time outside kernels", overhead * ms, "ms",
                        "eager forward wall time", t_wall * ms))
    return {"rows": rows, "details": details}


def bench_cold(args, tme):
    reps = args.cold_repeats or (args.repeats or 3)
    env = dict(os.environ)
    env["TORCH_MLIR_EAGER_CACHE_DIR"] = "off"
    cmd = [sys.executable, os.path.join(HERE, "cold_forward.py"), "--device", args.device]
    runs = []
    for i in range(reps):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"cold_forward.py failed ({p.returncode}):\n{p.stderr[-3000:]}")
        res = json.loads(p.stdout.strip().splitlines()[-1])
        res["process_wall_s"] = wall
        log(f"  cold run {i + 1}/{reps}: first forward {res['eager_first_s']:.2f}s, "
            f"{res['kernels_compiled']} kernels, compile {res['compile_seconds'] or 0:.2f}s")
        runs.append(res)
    med = lambda k: bu.median([r[k] for r in runs if r.get(k) is not None])  # noqa: E731
    rows = [
        row("ResNet18 b1 224 first forward, new process: native", med("native_first_s"), "s"),
        row("ResNet18 b1 224 first forward, new process, cache off: TorchMLIRTensor",
            med("eager_first_s"), "s", "native first forward", med("native_first_s"),
            samples=[r["eager_first_s"] for r in runs]),
        row("  of which compiling kernels (stats compile_seconds)", med("compile_seconds"), "s",
            "eager first forward", med("eager_first_s")),
        row("  kernels compiled", med("kernels_compiled"), "kernels"),
        row("  second forward in that process", med("eager_second_s"), "s",
            "eager first forward", med("eager_first_s")),
    ]
    return {"rows": rows, "details": {"repeats": reps, "runs": runs}}


BENCH = {
    "overhead": bench_overhead,
    "bounds": bench_bounds,
    "models": bench_models,
    "rss": bench_rss,
    "resnet18": bench_resnet18,
    "kernel_quality": bench_kernel_quality,
    "cold": bench_cold,
}


# ----------------------------------------------------------------------------- output


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}"
    return str(v)


def print_table(results, stream=sys.stdout):
    headers = ["benchmark", "measured", "unit", "baseline", "baseline value", "ratio"]
    lines = []
    for item, res in results.items():
        if "error" in res:
            lines.append([f"[{item}] ERROR: {res['error'].splitlines()[0][:100]}", "", "", "", "", ""])
            continue
        for r in res["rows"]:
            ratio = r.get("ratio")
            lines.append([r["name"], fmt(r["value"]), r["unit"], r["baseline"] or "",
                          fmt(r["baseline_value"]) if r["baseline"] else "",
                          f"{ratio:.2f}x" if ratio is not None else ""])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
              for i, h in enumerate(headers)]
    def out(cols):
        stream.write("  ".join(c.ljust(w) if i in (0, 2, 3) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cols, widths))).rstrip() + "\n")
    out(headers)
    out(["-" * w for w in widths])
    for l in lines:
        out(l)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", default=os.path.join(HERE, "results", "latest.json"),
                   help="JSON output file (default: benchmarks/results/latest.json)")
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats; skip batch 8, kernel_quality and cold")
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(ITEMS)}")
    p.add_argument("--repeats", type=int, default=None, help="override the repeat counts")
    p.add_argument("--rss-iters", type=int, default=200, help="forwards for the rss item")
    p.add_argument("--rss-size", type=int, default=224, help="input size for the rss item")
    p.add_argument("--cold-repeats", type=int, default=None, help="new processes for 'cold' (3)")
    p.add_argument("--device", default=None, help="IREE driver (default: the backend's default)")
    args = p.parse_args(argv)

    import torch_mlir_eager as tme

    args.device = args.device or tme.default_device()
    if args.only:
        selected = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in selected if s not in BENCH]
        if unknown:
            p.error(f"unknown item(s) {unknown}; choose from {ITEMS}")
    else:
        selected = [s for s in ITEMS if not (args.quick and s in SLOW_ITEMS)]

    results = {}
    t_all = time.perf_counter()
    for name in ITEMS:
        if name not in selected:
            continue
        log(f"[{name}]")
        t0 = time.perf_counter()
        try:
            results[name] = BENCH[name](args, tme)
        except Exception as e:  # keep the other items
            import traceback

            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        results[name]["seconds"] = time.perf_counter() - t0
        log(f"  ({results[name]['seconds']:.1f}s)")

    report = {
        "machine": bu.machine_description(),
        "device": args.device,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "total_seconds": time.perf_counter() - t_all,
        "results": results,
    }
    print()
    print_table(results)
    print(f"\n{report['machine']['cpu']}, {report['machine']['logical_cpus']} logical CPUs, "
          f"torch threads {report['machine']['torch_threads']}, IREE device {args.device}; "
          f"total {report['total_seconds']:.0f}s")
    if args.out:
        bu.write_json(args.out, report)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
