"""Decomposition, strided kernel sparsity and data-free neuron merging on the MNIST protocol.

Every model here is made by the product's own ``compress`` (8,000 training / 2,000 evaluation
images of MNIST's test split; dense baselines trained once from seed 0 and cached in
``$SQUEEZETUNE_CACHE``); accuracies are those of the model decoded from the written container,
MACs, parameters and CPU latencies those of the report (``compare_latency``: dense and compressed
timed in turns, medians, each in its faster memory layout). Sections of BENCHMARKS.md:

* ``decomposition-cnn`` -- ResNet-20 and VGG: low-rank decomposition alone, LASSO channel pruning
  alone, and both (channel pruning, then decomposition, then one shared fine-tune), each fine-tuned
  by distillation for ``--ft-epochs``;
* ``decomposition-lenet300`` -- LeNet-300-100: low-rank factors against magnitude pruning at equal
  container bytes (the prune fraction bisected to each low-rank file's size), both fine-tuned;
* ``decomposition-merge`` -- LeNet-300-100's hidden layers: data-free merging of 10/25/50% of the
  neurons against removing the neurons of smallest L1 norm, with no data and after one epoch;
* ``decomposition-strided`` -- ResNet-20: strided kernel sparsity against unstructured pruning of
  the same 3x3 kernels at the same kept fraction (no fine-tuning).

    python benchmarks/bench_decomposition.py --data-dir ../shared/data/mnist [--only cnn,lenet300,merge,strided]

The machine is shared: each section states the load average while it ran.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, markdown_table, write_section  # noqa: E402

from squeezetune.compression import Recipe, compress  # noqa: E402
from squeezetune.compression.report import Report  # noqa: E402
from squeezetune.tasks import get_task  # noqa: E402

OUT = Path(tempfile.mkdtemp(prefix="bench-decomposition-"))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def run(task: str, recipe: dict, name: str, args, *, latency: bool = True) -> Report:
    t0 = time.perf_counter()
    before = load()
    report = compress(get_task(task), Recipe.from_dict({"name": name, **recipe}), out=OUT / f"{name}.sqz", data_dir=args.data_dir, latency=latency, progress=lambda m: None)
    log(
        f"{task} {name}: {100 * report.dense_accuracy:.2f} -> {100 * report.accuracy:.2f}%, MACs {report.macs / report.dense_macs:.3f}, "
        f"{report.compressed_bytes:,} B, {time.perf_counter() - t0:.0f} s, load {before} -> {load()}"
    )
    return report


def pt(x: float) -> str:
    return f"{100 * x:.2f}"


def drop(r: Report) -> str:
    return f"{100 * (r.accuracy - r.dense_accuracy):+.2f}"


def speed(r: Report, batch: int) -> str:
    lat = r.latency
    return f"{lat[f'dense_latency_ms_b{batch}'] / lat[f'latency_ms_b{batch}']:.2f}x ({lat[f'latency_ms_b{batch}']:.2f} ms)"


# -- ResNet-20 and VGG -----------------------------------------------------------------------------


def cnn(args) -> None:
    ft = {"epochs": args.ft_epochs, "lr": 0.01, "distill": True}
    encode = {"coder": "auto", "float_bits": 32}
    rows, notes = [], []
    start, loads = time.perf_counter(), [load()]
    for task, label in (("resnet20-mnist", "ResNet-20"), ("vgg-mnist", "VGG")):
        if task not in args.nets:
            continue
        recipes = {
            f"decomposition {args.decompose_target}": {"stages": [{"decompose": {"method": "lowrank", "macs_target": args.decompose_target}}, {"finetune": ft}], "encode": encode},
            **{f"channel pruning {c}": {"stages": [{"structured": {"method": "lasso", "macs_target": c}}, {"finetune": ft}], "encode": encode} for c in args.channel_target},
            **{
                f"channel pruning to {c} of the predicted b64 latency": {"stages": [{"structured": {"method": "lasso", "macs_target": c, "cost": "latency"}}, {"finetune": ft}], "encode": encode}
                for c in args.latency_target
            },
            f"both: channels {args.both_channels}, then decomposition {args.both_target}": {
                "stages": [{"structured": {"method": "lasso", "macs_target": args.both_channels}}, {"decompose": {"method": "lowrank", "macs_target": args.both_target}}, {"finetune": ft}],
                "encode": encode,
            },
        }
        for what, recipe in recipes.items():
            r = run(task, recipe, f"{task}-" + "-".join(what.replace(",", "").replace(":", "").split()), args)
            loads.append(load())
            rows.append(
                [
                    label,
                    what,
                    pt(r.dense_accuracy),
                    pt(r.accuracy),
                    drop(r),
                    f"{r.dense_macs / 1e6:.1f}M -> {r.macs / 1e6:.1f}M ({r.dense_macs / r.macs:.2f}x)",
                    f"{r.dense_params / 1e3:.1f}k -> {r.params / 1e3:.1f}k",
                    speed(r, 1),
                    speed(r, 64),
                ]
            )
    headers = ["model", "recipe (MAC targets: fractions of the dense MACs)", "dense %", "decoded %", "change, pt", "MACs", "params", "CPU speed-up b1", "CPU speed-up b64"]
    text = "\n".join(
        [
            "## Decomposition and channel pruning of CNNs (`benchmarks/bench_decomposition.py`)",
            "",
            f"{machine()}; torch.set_num_threads(1) (the machine is shared: load average {' / '.join(loads)} at the starts of the runs and their end). "
            "MNIST protocol (8,000 train / 2,000 eval), dense baselines from the product's cache (task epochs, seed 0). "
            f"Each recipe ends in {args.ft_epochs} epoch(s) of fine-tuning distilled from the dense model (lr 0.01, cosine) -- a modest budget, "
            "chosen for this machine; more epochs recover more. Decomposition: `lowrank` (a 3x3 conv becomes 3x3 to r channels then 1x1), "
            "ranks planned by singular-value energy to the MAC target, fitted by SVD then least squares on 256 sampled training images. "
            "Channel pruning: LASSO selection + least squares (`structured`, method lasso, uniform allocation, multiples of 8); "
            "a row 'to x of the predicted b64 latency' plans the counts with `cost: latency` "
            "(each layer timed alone on this machine, cached, interpolated; the target a fraction of the dense model's predicted batch-64 latency). "
            "Both: channel pruning first, then decomposition to the overall target, one fine-tune. "
            + (f"With {args.ft_epochs} fine-tune epochs a channel-pruning row is the built-in `channel-pruning --macs-target` recipe at its target. " if args.ft_epochs == 3 else "")
            + "Accuracies are the decoded containers'; MACs, params and speed-ups are the compress report's "
            "(CPU, batch 1 and 64, dense and compressed timed in turns, medians of 20, each in its faster memory layout).",
            "",
            markdown_table(headers, rows),
            "",
            *notes,
            f"Total wall time {(time.perf_counter() - start) / 60:.0f} min.",
        ]
    )
    print(text)
    write_section("decomposition-cnn", text)


# -- LeNet-300-100: low rank against pruning at equal bytes ------------------------------------------


def lenet300(args) -> None:
    from squeezetune.compression.architecture import architecture_spec
    from squeezetune.compression.coding import codec
    from squeezetune.compression.stages import Context, apply_stage
    from squeezetune.compression.unstructured.pruning import PruneConfig

    task = "lenet300-mnist"
    ft = {"epochs": args.lenet_epochs, "lr": args.lenet_lr, "distill": True}
    start, loads = time.perf_counter(), [load()]
    rows = []
    model = get_task(task).build_model()

    def pruned_bytes(keep: float) -> int:
        work = apply_stage(model, PruneConfig.from_dict({"layers": {"fc1": {"keep_fraction": keep}, "fc2": {"keep_fraction": keep}}}), Context(teacher=model, example=torch.zeros(1, 1, 28, 28)))
        return codec.encode_model(work, task=task, index_bits="auto", coder="auto", spec=architecture_spec(work, get_task(task).build_model())).file_bytes

    for fraction in args.rank_fractions:
        recipe = {
            "stages": [{"decompose": {"layers": {"fc1": {"rank_fraction": fraction}, "fc2": {"rank_fraction": fraction}}}}, {"finetune": ft}],
            "encode": {"coder": "auto", "float_bits": 32, "index_bits": "auto"},
        }
        low = run(task, recipe, f"lenet300-lowrank-{fraction}", args, latency=False)
        lo, hi = 0.001, 1.0
        for _ in range(14):  # the keep fraction whose file is as large as the low-rank one (masks fix the bytes: no fine-tune needed)
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if pruned_bytes(mid) <= low.compressed_bytes else (lo, mid)
        recipe = {
            "stages": [{"prune": {"layers": {"fc1": {"keep_fraction": lo}, "fc2": {"keep_fraction": lo}}}}, {"finetune": ft}],
            "encode": {"coder": "auto", "float_bits": 32, "index_bits": "auto"},
        }
        pruned = run(task, recipe, f"lenet300-prune-{fraction}", args, latency=False)
        loads.append(load())
        ranks = [t.shape[0] for t in low.tensors if t.name in ("fc1.0", "fc2.0")]
        rows.append(
            [
                f"fc1 rank {ranks[0]}, fc2 rank {ranks[1]}",
                f"{low.compressed_bytes:,}",
                pt(low.stages[1].accuracy),
                pt(low.accuracy),
                f"{100 * lo:.1f}% of fc1, fc2",
                f"{pruned.compressed_bytes:,}",
                pt(pruned.stages[1].accuracy),
                pt(pruned.accuracy),
            ]
        )
    headers = ["low rank", "bytes", "before FT %", f"after {args.lenet_epochs}-epoch FT %", "pruning keeps", "bytes", "before FT %", f"after {args.lenet_epochs}-epoch FT %"]
    text = "\n".join(
        [
            "## LeNet-300-100: low-rank factors against pruning at equal bytes (`benchmarks/bench_decomposition.py`)",
            "",
            f"{machine()}; torch.set_num_threads(1); load average {' / '.join(loads)}. MNIST protocol; dense {pt(low.dense_accuracy)}% "
            f"({low.dense_bytes:,} B fp32). fc1 and fc2 become low-rank pairs (rank = a fraction of each layer's limit, where the pair holds "
            "as many weights as the layer; SVD, then least squares on 256 sampled images); fc3 stays dense. Pruning keeps the same fraction "
            "of fc1 and fc2 by magnitude, bisected so that its container is as large as the low-rank one. Both containers: float32 values, "
            "every stream coded the smallest way (positions with index_bits auto), no weight sharing; both fine-tuned "
            f"{args.lenet_epochs} epoch(s) by distillation (lr {args.lenet_lr}: at lr 0.01 the smallest ranks diverged). Accuracies are the decoded files'.",
            "",
            markdown_table(headers, rows),
            "",
            f"Wall time {(time.perf_counter() - start) / 60:.0f} min.",
        ]
    )
    print(text)
    write_section("decomposition-lenet300", text)


# -- LeNet-300-100: data-free merging ----------------------------------------------------------------


def merge(args) -> None:
    task = "lenet300-mnist"
    start, loads = time.perf_counter(), [load()]
    rows = []
    encode = {"coder": "auto", "float_bits": 32}
    for fraction in (0.1, 0.25, 0.5):
        keep = {"fc1": 300 - round(300 * fraction), "fc2": 100 - round(100 * fraction)}
        results = {}
        for tuned in (False, True):
            tail = [{"finetune": {"epochs": 1, "lr": 0.01}}] if tuned else []
            for name, stage in (
                ("saliency", {"merge": {"score": "saliency", "default": {"remove_fraction": fraction}}}),
                ("distance", {"merge": {"score": "distance", "default": {"remove_fraction": fraction}}}),
                ("norm", {"structured": {"method": "l1", "round_to": 1, "layers": {n: {"keep": k} for n, k in keep.items()}}}),
            ):
                r = run(task, {"stages": [stage, *tail], "encode": encode}, f"lenet300-{name}-{fraction}-{int(tuned)}", args, latency=False)
                results[name, tuned] = r
        loads.append(load())
        dense = results["norm", False].dense_accuracy
        rows.append(
            [
                f"{100 * fraction:.0f}% ({300 - keep['fc1']} of fc1, {100 - keep['fc2']} of fc2)",
                *(pt(results[n, False].accuracy) for n in ("saliency", "distance", "norm")),
                *(pt(results[n, True].accuracy) for n in ("saliency", "distance", "norm")),
            ]
        )
    headers = ["neurons removed", "merge, saliency %", "merge, distance %", "smallest L1 norm %", "merge, saliency + 1 epoch %", "merge, distance + 1 epoch %", "smallest L1 norm + 1 epoch %"]
    text = "\n".join(
        [
            "## Data-free neuron merging on LeNet-300-100 (`benchmarks/bench_decomposition.py`)",
            "",
            f"{machine()}; torch.set_num_threads(1); load average {' / '.join(loads)}. MNIST protocol; dense {pt(dense)}%. "
            "The same fraction of the neurons of both hidden layers (fc1: 300, fc2: 100) goes. Merge (Srinivas & Babu 2015, `merge` stage): "
            "repeatedly the pair of least saliency ||a_j||^2 ||w_i - w_j||^2 (or of least distance ||w_i - w_j||^2) is merged, j's outgoing "
            "weights added to i's; the recipe is data-free (no stage reads any data; the first columns are measured only after the last stage). "
            "Smallest L1 norm: the neurons whose incoming weights have the smallest L1 norm are removed, nothing added (`structured`, method l1, "
            "the same counts). The last three columns add one epoch of plain fine-tuning (lr 0.01, no distillation). Accuracies are the decoded files'.",
            "",
            markdown_table(headers, rows),
            "",
            f"Wall time {(time.perf_counter() - start) / 60:.0f} min.",
        ]
    )
    print(text)
    write_section("decomposition-merge", text)


# -- ResNet-20: strided kernel sparsity ---------------------------------------------------------------


def strided(args) -> None:
    task = "resnet20-mnist"
    model = get_task(task).build_model()
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and n != "conv1"]
    start, loads = time.perf_counter(), [load()]
    rows = []
    encode = {"coder": "auto", "float_bits": 32}
    for stride, offset in ((2, 0), (3, 1), (9, 4)):
        kept = len(range(offset, 9, stride)) / 9
        sparse = run(task, {"stages": [{"strided": {"layers": {n: {"stride": stride, "offset": offset} for n in convs}}}], "encode": encode}, f"r20-strided-{stride}", args)
        masked = run(task, {"stages": [{"prune": {"layers": {n: {"keep_fraction": kept} for n in convs}}}], "encode": encode}, f"r20-unstructured-{stride}", args)
        loads.append(load())
        for label, r in ((f"strided, stride {stride} offset {offset}", sparse), ("unstructured (magnitude)", masked)):
            rows.append([label, f"{100 * kept:.0f}%", pt(r.dense_accuracy), pt(r.accuracy), f"{r.macs / 1e6:.1f}M ({r.dense_macs / r.macs:.2f}x)", speed(r, 1), speed(r, 64)])
    headers = ["3x3 kernels keep", "kept fraction", "dense %", "decoded %, no FT", "MACs", "CPU speed-up b1", "CPU speed-up b64"]
    text = "\n".join(
        [
            "## Strided kernel sparsity against unstructured sparsity, ResNet-20 (`benchmarks/bench_decomposition.py`)",
            "",
            f"{machine()}; torch.set_num_threads(1); load average {' / '.join(loads)}. MNIST protocol. Every 3x3 convolution but the stem keeps the "
            "same fraction of its kernel weights. Strided (Anwar et al. 2017, `strided` stage): every kernel keeps positions offset, offset + stride, ... "
            "of its flattened 3x3 kernel -- stride 2 offset 0: corners and centre (5/9, run as a dilated 2x2 plus a 1x1 convolution); stride 3 offset 1: "
            "the middle column (3/9, a 3x1 convolution); stride 9 offset 4: the centre (1/9, a 1x1 convolution) -- refit by least squares on 256 "
            "sampled images. Unstructured: magnitude pruning of the same kernels to the same fraction (masks baked into dense tensors, which "
            "PyTorch's CPU convolutions run at full cost: the MACs column counts what runs). No fine-tuning. MACs and speed-ups from the compress "
            "report (batch 1 and 64, timed in turns with the dense model).",
            "",
            markdown_table(headers, rows),
            "",
            f"Wall time {(time.perf_counter() - start) / 60:.0f} min.",
        ]
    )
    print(text)
    write_section("decomposition-strided", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist")
    parser.add_argument("--only", default="lenet300,merge,strided,cnn", help="comma-separated sections: cnn, lenet300, merge, strided")
    parser.add_argument("--ft-epochs", type=int, default=1)
    parser.add_argument("--nets", nargs="+", default=["resnet20-mnist", "vgg-mnist"], choices=["resnet20-mnist", "vgg-mnist"], help="the CNNs of the cnn section")
    parser.add_argument("--lenet-epochs", type=int, default=2)
    parser.add_argument("--decompose-target", type=float, default=0.5)
    parser.add_argument("--channel-target", type=float, nargs="+", default=[0.5], help="one channel-pruning row per target")
    parser.add_argument(
        "--latency-target", type=float, nargs="*", default=[], help="one channel-pruning row per target, planned with cost: latency (a fraction of the dense model's predicted batch-64 latency)"
    )
    parser.add_argument("--both-channels", type=float, default=0.6)
    parser.add_argument("--both-target", type=float, default=0.3)
    parser.add_argument("--lenet-lr", type=float, default=0.005)
    parser.add_argument("--rank-fractions", type=float, nargs="+", default=[0.06, 0.12, 0.25, 0.5])
    args = parser.parse_args()
    torch.set_num_threads(1)
    sections = {"lenet300": lenet300, "merge": merge, "strided": strided, "cnn": cnn}
    for name in args.only.split(","):
        sections[name](args)


if __name__ == "__main__":
    main()
