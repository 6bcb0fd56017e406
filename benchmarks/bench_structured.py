"""Structured pruning benchmark: physically smaller and faster CNNs on the MNIST protocol.

* ResNet-20 (``resnet20-mnist``: 8,000 train / 2,000 eval images, fixed seeds) pruned to ~2x and
  ~4x fewer MACs (``plan_counts`` uniform, counts rounded to multiples of 8), by L1 filter
  pruning and by LASSO channel selection + least-squares reconstruction at equal per-layer counts;
  accuracy before and after a short fine-tune, parameters, MACs, and CPU latency at batch 64
  (dense and pruned timed in turns in this process, medians, 2 threads).
* The same L1 vs LASSO+LS comparison on the VGG net (``vgg-mnist``) at ~2x.
* Per-layer reconstruction error (relative squared error of each pruned layer's consumers, on
  sampled points) for L1 (channels dropped), LASSO before LS and LASSO after LS.
* Per-layer sensitivity of ResNet-20 (L1 pruning one layer at a time, no fine-tuning).

    python benchmarks/bench_structured.py --data-dir ../shared/data/mnist

Dense baselines are trained once and cached as safetensors under ``runs/bench_structured/``
(git-ignored); delete that folder to retrain. Writes the ``structured`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, markdown_table, write_section  # noqa: E402

from squeezetune.compression.finetune import FinetuneConfig, evaluate, train  # noqa: E402
from squeezetune.compression.latency import compare_latency  # noqa: E402
from squeezetune.compression.measure import macs, params  # noqa: E402
from squeezetune.compression.structured.channel import ChannelPruneConfig, channel_prune  # noqa: E402
from squeezetune.compression.structured.filters import filter_prune, plot_sensitivity, sensitivity_analysis, sensitivity_table  # noqa: E402
from squeezetune.compression.structured.shrink import plan_counts  # noqa: E402
from squeezetune.tasks import get_task  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "runs" / "bench_structured"
ANCHORS = [
    ["Torch-Pruning (DepGraph), ResNet-56, CIFAR-10", "2.1x MACs", "93.53 -> 93.46 top-1"],
    ["He et al. 2017 (LASSO + LS), VGG-16, ImageNet", "5x", "+0.3 top-5 error"],
    ["He et al. 2017 (LASSO + LS), ResNet-50, ImageNet", "2x", "-1.4 top-5 (error +1.4)"],
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def dense_model(task_name: str, train_split, epochs: int, seed: int):
    """The task's model trained from a fixed seed, cached as safetensors."""
    from safetensors.torch import load_file, save_file

    task = get_task(task_name)
    torch.manual_seed(seed)
    model = task.build_model()
    path = CACHE / f"{task_name}-e{epochs}-s{seed}.safetensors"
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        log(f"{task_name}: dense weights from {path.relative_to(REPO)}")
        return model.eval(), 0.0
    t0 = time.perf_counter()
    cfg = FinetuneConfig(epochs=epochs, lr=task.lr, weight_decay=task.weight_decay, batch_size=task.batch_size, seed=seed)
    train(model, train_split, cfg, progress=lambda m: log(f"{task_name} dense {m}"))
    CACHE.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval(), time.perf_counter() - t0


def finetune(model, task_name: str, train_split, epochs: int, lr: float, seed: int):
    task = get_task(task_name)
    model = copy.deepcopy(model)
    cfg = FinetuneConfig(epochs=epochs, lr=lr, weight_decay=task.weight_decay, batch_size=task.batch_size, seed=seed)
    return train(model, train_split, cfg)


def compare(task_name: str, dense, train_split, eval_split, target: float, args, *, l1_errors: bool = True) -> dict:
    """L1 vs LASSO+LS at the counts of a uniform plan; accuracies before/after a short fine-tune."""
    keep = plan_counts(dense, target, round_to=8)
    cfg = ChannelPruneConfig(keep=keep, images=args.images, points=args.points, seed=args.seed)
    t0 = time.perf_counter()
    lasso_model, lasso_report = channel_prune(dense, train_split.x, cfg)
    t_lasso = time.perf_counter() - t0
    t0 = time.perf_counter()
    l1_model = filter_prune(dense, keep)
    t_l1 = time.perf_counter() - t0
    l1_report = None
    if l1_errors:  # the same sampled-point error measurement for the L1 choice (no reconstruction)
        _, l1_report = channel_prune(dense, train_split.x, ChannelPruneConfig(keep=keep, select="l1", reconstruct=False, images=args.images, points=args.points, seed=args.seed))
    out = {
        "keep": keep,
        "macs": macs(lasso_model),
        "params": params(lasso_model),
        "lasso_report": lasso_report,
        "l1_report": l1_report,
        "t_lasso": t_lasso,
        "t_l1": t_l1,
        "models": {"l1": l1_model, "lasso": lasso_model},
    }
    for name, model in (("l1", l1_model), ("lasso", lasso_model)):
        out[f"{name}_before"] = evaluate(model, eval_split)
        t0 = time.perf_counter()
        tuned = finetune(model, task_name, train_split, args.ft_epochs, args.ft_lr, args.seed)
        out[f"{name}_ft_s"] = time.perf_counter() - t0
        out[f"{name}_after"] = evaluate(tuned, eval_split)
        out["models"][f"{name}_ft"] = tuned
        log(f"{task_name} {1 / target:.0f}x {name}: {100 * out[f'{name}_before']:.2f}% -> fine-tuned {100 * out[f'{name}_after']:.2f}%")
    return out


def error_rows(result: dict) -> list[list[object]]:
    l1 = {r.layer: r for r in result["l1_report"]} if result["l1_report"] else {}
    rows = []
    for r in result["lasso_report"]:
        rows.append(
            [
                f"`{r.layer}`",
                f"{r.channels} -> {r.kept}",
                f"{l1[r.layer].error_before:.4f}" if r.layer in l1 else "-",
                f"{r.error_before:.4f}",
                f"{r.error_after:.4f}",
                ", ".join(f"`{c}`" for c in r.residual) or "-",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    parser.add_argument("--dense-epochs", type=int, default=3)
    parser.add_argument("--ft-epochs", type=int, default=1)
    parser.add_argument("--ft-lr", type=float, default=0.01)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sensitivity", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()

    train_split, eval_split = get_task("resnet20-mnist").load_data(args.data_dir)
    resnet, t_resnet = dense_model("resnet20-mnist", train_split, args.dense_epochs, args.seed)
    vgg, t_vgg = dense_model("vgg-mnist", train_split, args.dense_epochs, args.seed)
    acc = {"resnet": evaluate(resnet, eval_split), "vgg": evaluate(vgg, eval_split)}
    log(f"dense accuracy: ResNet-20 {100 * acc['resnet']:.2f}%, VGG {100 * acc['vgg']:.2f}%")

    r2 = compare("resnet20-mnist", resnet, train_split, eval_split, 0.5, args)
    r4 = compare("resnet20-mnist", resnet, train_split, eval_split, 0.25, args, l1_errors=False)
    v2 = compare("vgg-mnist", vgg, train_split, eval_split, 0.5, args)

    log("latency")
    timed = {"resnet": resnet, "resnet2": r2["models"]["lasso_ft"], "resnet4": r4["models"]["lasso_ft"], "vgg": vgg, "vgg2": v2["models"]["lasso_ft"]}
    lat = compare_latency(timed, batch=64, device="cpu", repeats=args.repeats)
    lat_nchw = compare_latency(timed, batch=64, device="cpu", repeats=args.repeats, layouts=("contiguous",))

    sens = None
    if not args.no_sensitivity:
        log("sensitivity")
        t0 = time.perf_counter()
        sens = sensitivity_analysis(resnet, lambda m: evaluate(m, eval_split), fractions=(0.25, 0.5, 0.75))
        plot = plot_sensitivity(sens, CACHE / "resnet20-sensitivity.png")
        t_sens = time.perf_counter() - t0
    total = time.perf_counter() - start

    dense_macs, dense_params = macs(resnet), params(resnet)
    vgg_macs, vgg_params = macs(vgg), params(vgg)

    def pt(x: float) -> str:
        return f"{100 * x:.2f}"

    def delta(x: float, base: float) -> str:
        return f"{100 * (x - base):+.2f}"

    def speed(key: str, base: str) -> list[str]:
        return [f"{lat[key]:.1f}", f"{lat[base] / lat[key]:.2f}x", f"{lat_nchw[key]:.1f}", f"{lat_nchw[base] / lat_nchw[key]:.2f}x"]

    rows = [["ResNet-20 dense", f"{dense_macs / 1e6:.1f}M", f"{dense_params / 1e3:.1f}k", "1.00x", pt(acc["resnet"]), "-", "-", "-", "-", *speed("resnet", "resnet")]]
    for label, r, key in (("ResNet-20 ~2x", r2, "resnet2"), ("ResNet-20 ~4x", r4, "resnet4")):
        rows.append(
            [
                label,
                f"{r['macs'] / 1e6:.1f}M",
                f"{r['params'] / 1e3:.1f}k",
                f"{dense_macs / r['macs']:.2f}x",
                f"{pt(r['l1_before'])} / {pt(r['lasso_before'])}",
                f"{pt(r['l1_after'])} / {pt(r['lasso_after'])}",
                f"{delta(r['l1_after'], acc['resnet'])} / {delta(r['lasso_after'], acc['resnet'])}",
                f"{r['t_l1']:.1f} / {r['t_lasso']:.1f}",
                f"{r['l1_ft_s']:.0f} / {r['lasso_ft_s']:.0f}",
                *speed(key, "resnet"),
            ]
        )
    rows.append(["VGG dense", f"{vgg_macs / 1e6:.1f}M", f"{vgg_params / 1e3:.1f}k", "1.00x", pt(acc["vgg"]), "-", "-", "-", "-", *speed("vgg", "vgg")])
    rows.append(
        [
            "VGG ~2x",
            f"{v2['macs'] / 1e6:.1f}M",
            f"{v2['params'] / 1e3:.1f}k",
            f"{vgg_macs / v2['macs']:.2f}x",
            f"{pt(v2['l1_before'])} / {pt(v2['lasso_before'])}",
            f"{pt(v2['l1_after'])} / {pt(v2['lasso_after'])}",
            f"{delta(v2['l1_after'], acc['vgg'])} / {delta(v2['lasso_after'], acc['vgg'])}",
            f"{v2['t_l1']:.1f} / {v2['t_lasso']:.1f}",
            f"{v2['l1_ft_s']:.0f} / {v2['lasso_ft_s']:.0f}",
            *speed("vgg2", "vgg"),
        ]
    )
    headers = [
        "model",
        "MACs",
        "params",
        "MACs cut",
        "acc. before FT (L1 / LASSO+LS)",
        f"acc. after {args.ft_epochs}-epoch FT (L1 / LASSO+LS)",
        "change vs dense, pt",
        "prune s (L1 / LASSO)",
        "FT s",
        "CPU ms @64 (LASSO+LS model)",
        "speed-up",
        "ms @64, NCHW only",
        "speed-up, NCHW only",
    ]

    def winner(r: dict, stage: str) -> str:
        a, b = r[f"l1_{stage}"], r[f"lasso_{stage}"]
        return "tie" if abs(a - b) < 5e-4 else ("LASSO+LS" if b > a else "L1")

    md = [
        "## Structured pruning: L1 filters vs LASSO channel selection + LS (`benchmarks/bench_structured.py`)",
        "",
        f"{machine()}; torch.set_num_threads(2). MNIST protocol (8,000 train / 2,000 eval images), seed {args.seed}. "
        f"Dense nets: {args.dense_epochs} epochs from a fixed seed (SGD, task lr, cosine), cached under `runs/bench_structured/`"
        + (f" (trained in this run: ResNet-20 {t_resnet:.0f} s, VGG {t_vgg:.0f} s)" if t_resnet or t_vgg else "")
        + ". "
        f"Per-layer counts: `plan_counts(model, target, round_to=8)` (uniform fraction, multiples of 8: oneDNN's CPU kernels pad "
        "channels to 8, so e.g. 11 channels cost as much as 16). L1 and LASSO+LS prune the **same counts**; LASSO+LS samples "
        f"{args.images} training images x {args.points} points per layer. Fine-tune: {args.ft_epochs} epoch(s), lr {args.ft_lr}, cosine. "
        f"Latency: eval-mode forward of a 64-image batch on the CPU, the models timed in turns ({args.repeats} rounds), medians, "
        "each model in its faster memory layout (NCHW or channels_last, as `compare_latency` and the compress report measure it); "
        "other processes share this machine, so single figures are noisy -- ratios from the same rounds are the reliable part. "
        "The NCHW-only columns time the same models in the default layout alone, in a separate set of rounds.",
        "",
        markdown_table(headers, rows),
        "",
        f"Winner before fine-tuning: ResNet-20 ~2x {winner(r2, 'before')}, ~4x {winner(r4, 'before')}, VGG ~2x {winner(v2, 'before')}; "
        f"after: ResNet-20 ~2x {winner(r2, 'after')}, ~4x {winner(r4, 'after')}, VGG ~2x {winner(v2, 'after')}.",
        "",
        "Counts kept per layer (ResNet-20 ~2x): " + ", ".join(f"`{k}` {v}" for k, v in r2["keep"].items()) + ".",
        "",
        "Counts kept per layer (ResNet-20 ~4x): " + ", ".join(f"`{k}` {v}" for k, v in r4["keep"].items()) + ".",
        "",
        "### Reconstruction error per layer",
        "",
        "Relative squared error of each pruned layer's consumers (the convs/linears reading its channels; pre-BatchNorm outputs "
        "over their variance) on the sampled points, inputs from the network pruned so far, targets from the dense one. "
        "L1 = filters dropped by norm, nothing refit; LASSO = channels chosen by LASSO, before and after the least-squares refit. "
        "The last column lists consumers refit towards Y2 + (Y1 - Y1') because they feed a residual add.",
        "",
        "ResNet-20 ~2x:",
        "",
        markdown_table(["layer", "channels", "L1", "LASSO, no LS", "LASSO + LS", "residual target"], error_rows(r2)),
        "",
        "VGG ~2x:",
        "",
        markdown_table(["layer", "channels", "L1", "LASSO, no LS", "LASSO + LS", "residual target"], error_rows(v2)),
        "",
        "### Published anchors (not comparable: other datasets, models and budgets)",
        "",
        markdown_table(["method, model, data", "reduction", "reported"], ANCHORS),
    ]
    if sens is not None:
        md += [
            "",
            f"### ResNet-20 per-layer sensitivity (L1, one layer at a time, no fine-tuning; {t_sens:.0f} s)",
            "",
            sensitivity_table(sens),
            "",
            f"Plot: `{plot.relative_to(REPO)}` (not committed).",
        ]
    md += ["", f"Total wall time {total / 60:.1f} min."]
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        write_section("structured", text)


if __name__ == "__main__":
    main()
