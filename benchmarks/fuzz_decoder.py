"""Fuzz a bytes decoder with damaged copies of a valid file; writes the "fuzz" section of BENCHMARKS.md.

A decoder passes when every damaged file either raises ``SqueezeError`` (detected) or decodes,
nothing else escapes (no IndexError, MemoryError, ...), no call hangs, and every single-bit flip of
the seed file is detected. The script exits 1 otherwise, printing the first few tracebacks.

    .venv/bin/python benchmarks/fuzz_decoder.py                    # the container, built-in seed
    .venv/bin/python benchmarks/fuzz_decoder.py --target pkg.mod:decode --seed-file model.sqz

``--target`` names any function taking the file's bytes. Without ``--seed-file`` the seed is a
container shaped like a compressed LeNet-300-100 (about 25 KB in 13 sections, made-up payloads).
"""

from __future__ import annotations

import argparse
import importlib
import random
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, markdown_table, write_section  # noqa: E402

from squeezetune.compression.coding.container import pack_sections  # noqa: E402
from squeezetune.errors import SqueezeError  # noqa: E402

DEFAULT_TARGET = "squeezetune.compression.coding.container:unpack_sections"
FULL_SWEEP_LIMIT = 64 * 1024  # bytes; larger seeds get a sample of single-bit flips
SAMPLED_BITS = 200_000
HEADER_REGION = 256  # extreme values are written into the first this-many bytes
EXTREMES = [
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\x00" * 4,
    b"\xff" * 4,
    b"\xff\xff\xff\x7f",  # u32 / i32 max
    b"\x00\x00\x00\x80",  # i32 min
    b"\xff" * 8,  # u64 max
    b"\xff" * 8 + b"\x7f",  # longest legal varint
    b"\xff" * 16,  # a varint that never ends
    b"\x80" * 9 + b"\x01",  # a varint one byte too long
]


def representative_seed() -> bytes:
    """A container laid out like a pruned, shared and entropy-coded LeNet-300-100 (~25 KB)."""
    rng = random.Random(1234)
    sections = {"meta": b'{"task":"lenet300","layers":["fc1","fc2","fc3"],"bits":[5,5,5],"dtype":"float16"}'}
    # (positions, indices, codebook entries, bias) bytes per layer
    for layer, (pos, idx, k, bias) in enumerate([(9000, 11000, 32, 300), (1600, 1800, 32, 100), (180, 200, 32, 10)]):
        sections[f"L{layer}.pos"] = rng.randbytes(pos)
        sections[f"L{layer}.idx"] = rng.randbytes(idx)
        sections[f"L{layer}.cb"] = rng.randbytes(2 * k)
        sections[f"L{layer}.b"] = rng.randbytes(2 * bias)
    return pack_sections(sections)


def _flip_bits(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    out = bytearray(data)
    bits = rng.sample(range(len(out) * 8), min(len(out) * 8, rng.randint(1, 8)))
    for bit in bits:
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out), f"flip bits {sorted(bits)}"


def _replace_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    out = bytearray(data)
    offsets = rng.sample(range(len(out)), min(len(out), rng.randint(1, 8)))
    for offset in offsets:
        out[offset] = rng.randrange(256)
    return bytes(out), f"replace bytes at {sorted(offsets)}"


def _insert(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at, chunk = rng.randint(0, len(data)), rng.randbytes(rng.randint(1, 16))
    return data[:at] + chunk + data[at:], f"insert {len(chunk)} bytes at {at}"


def _delete(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at = rng.randrange(len(data))
    n = rng.randint(1, 64)
    return data[:at] + data[at + n :], f"delete {n} bytes at {at}"


def _truncate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    n = rng.randrange(len(data))
    return data[:n], f"truncate to {n} bytes"


def _duplicate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    start = rng.randrange(len(data))
    chunk = data[start : start + rng.randint(1, 256)]
    at = rng.randint(0, len(data))
    return data[:at] + chunk + data[at:], f"copy {len(chunk)} bytes from {start} to {at}"


def _extreme(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    value = rng.choice(EXTREMES)
    at = rng.randrange(min(len(data), HEADER_REGION))
    return data[:at] + value + data[at + len(value) :], f"overwrite {value!r} at {at}"


MUTATIONS: dict[str, Callable[[random.Random, bytes], tuple[bytes, str]]] = {
    "bit flips (1-8)": _flip_bits,
    "byte replacements (1-8)": _replace_bytes,
    "insertion": _insert,
    "deletion": _delete,
    "truncation": _truncate,
    "chunk duplication": _duplicate,
    "extreme header values": _extreme,
}


class _Hang(BaseException):
    """Raised by the alarm when one decode runs past --timeout (BaseException so no decoder eats it)."""


def _on_alarm(signum, frame):
    raise _Hang


class Fuzzer:
    """Runs the decoder on one input at a time and sorts the outcome."""

    def __init__(self, decode: Callable[[bytes], object], timeout: float, max_tracebacks: int, crash_dir: Path | None):
        self.decode, self.timeout, self.max_tracebacks, self.crash_dir = decode, timeout, max_tracebacks, crash_dir
        self.uncaught_shown = 0
        self.slowest, self.slowest_what = 0.0, ""
        self.alarm = hasattr(signal, "setitimer") and timeout > 0
        if self.alarm:
            signal.signal(signal.SIGALRM, _on_alarm)

    def run(self, data: bytes, what: str) -> str:
        """Return "detected", "decoded" or "uncaught"; print the first few uncaught tracebacks."""
        start = time.perf_counter()
        try:
            if self.alarm:
                signal.setitimer(signal.ITIMER_REAL, self.timeout)
            try:
                self.decode(data)
            finally:
                if self.alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            outcome = "decoded"
        except SqueezeError:
            outcome = "detected"
        except (Exception, _Hang):
            outcome = "uncaught"
            self._report_uncaught(data, what)
        elapsed = time.perf_counter() - start
        if elapsed > self.slowest:
            self.slowest, self.slowest_what = elapsed, what
        return outcome

    def _report_uncaught(self, data: bytes, what: str) -> None:
        self.uncaught_shown += 1
        if self.uncaught_shown <= self.max_tracebacks:
            kind = f"hang (over {self.timeout} s)" if sys.exc_info()[0] is _Hang else "uncaught exception"
            print(f"--- {kind} on mutant '{what}' ({len(data)} bytes):", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
        if self.crash_dir is not None:
            self.crash_dir.mkdir(parents=True, exist_ok=True)
            (self.crash_dir / f"crash-{self.uncaught_shown:04d}.bin").write_bytes(data)


def fuzz_mutations(fuzzer: Fuzzer, seed: bytes, iterations: int, rng: random.Random) -> dict[str, Counter]:
    counts: dict[str, Counter] = {kind: Counter() for kind in MUTATIONS}
    kinds = list(MUTATIONS)
    for i in range(iterations):
        kind = kinds[i % len(kinds)]
        mutant, what = MUTATIONS[kind](rng, seed)
        counts[kind]["mutants"] += 1
        if mutant == seed:
            counts[kind]["unchanged"] += 1
            continue
        counts[kind][fuzzer.run(mutant, f"{kind}: {what}")] += 1
    return counts


def sweep_single_bits(fuzzer: Fuzzer, seed: bytes, rng: random.Random) -> tuple[Counter, list[int], bool]:
    """Flip every bit of the seed (or a sample of bits when it is over FULL_SWEEP_LIMIT bytes)."""
    full = len(seed) <= FULL_SWEEP_LIMIT
    bits = range(len(seed) * 8) if full else sorted(rng.sample(range(len(seed) * 8), SAMPLED_BITS))
    counts: Counter = Counter()
    missed: list[int] = []
    data = bytearray(seed)
    for bit in bits:
        data[bit // 8] ^= 1 << (bit % 8)
        outcome = fuzzer.run(bytes(data), f"single bit {bit}")
        data[bit // 8] ^= 1 << (bit % 8)
        counts[outcome] += 1
        if outcome != "detected":
            missed.append(bit)
    return counts, missed, full


def load_target(spec: str) -> Callable[[bytes], object]:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise SystemExit(f"--target {spec!r} must look like module:function")
    return getattr(importlib.import_module(module), name)


def report(
    args: argparse.Namespace,
    seed: bytes,
    seed_name: str,
    counts: dict[str, Counter],
    bits: Counter,
    full: bool,
    seconds: float,
    fuzzer: Fuzzer,
) -> str:
    """The markdown for BENCHMARKS.md."""
    columns = ["mutants", "unchanged", "detected", "decoded", "uncaught"]
    rows = [[kind] + [c[k] for k in columns] for kind, c in counts.items()]
    total = sum(counts.values(), Counter())
    rows.append(["**all**"] + [total[k] for k in columns])
    sweep = "every" if full else f"a random sample of {sum(bits.values())}"
    lines = [
        "## Decoder fuzzing",
        "",
        f"`benchmarks/fuzz_decoder.py --target {args.target} --iterations {args.iterations} --rng-seed {args.rng_seed}` on {machine()}. Seed: {seed_name}, {len(seed)} bytes.",
        "",
        markdown_table(["mutation", "mutants", "identical to seed", "detected (SqueezeError)", "decoded OK", "uncaught"], rows),
        "",
        f'"Decoded OK" on a changed file means damage went unnoticed; "uncaught" counts any other exception or a decode over {args.timeout} s.',
        "",
        (
            f"Single-bit flips ({sweep} bit of the seed): {sum(bits.values())} flipped, {bits['detected']} detected, {bits['decoded']} decoded OK, {bits['uncaught']} uncaught."
            if not args.no_bit_sweep
            else "Single-bit sweep skipped: this target recomputes the checksums, so flips are meant to get through."
        ),
        "",
        f"Total {seconds:.1f} s; slowest single decode {fuzzer.slowest * 1e3:.2f} ms ({fuzzer.slowest_what}).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=DEFAULT_TARGET, help="module:function decoding bytes (default: %(default)s)")
    parser.add_argument("--seed-file", type=Path, help="a valid file to mutate (default: built-in)")
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--rng-seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds one decode may take before it is a hang")
    parser.add_argument("--max-tracebacks", type=int, default=3)
    parser.add_argument("--crash-dir", type=Path, help="save each input that escaped as a file here")
    parser.add_argument("--section", default="fuzz", help="BENCHMARKS.md section to write (default: %(default)s)")
    parser.add_argument("--no-report", action="store_true", help="do not write BENCHMARKS.md")
    parser.add_argument(
        "--no-bit-sweep",
        action="store_true",
        help="skip the single-bit sweep (for targets that bypass the checksums, such as fuzz_targets:resealed)",
    )
    args = parser.parse_args(argv)

    decode = load_target(args.target)
    if args.seed_file is not None:
        seed, seed_name = args.seed_file.read_bytes(), f"`{args.seed_file.name}`"
    else:
        seed, seed_name = representative_seed(), "built-in LeNet-300-100-shaped container (13 sections)"
    try:
        decode(seed)
    except Exception as e:
        print(f"the seed itself does not decode: {type(e).__name__}: {e}", file=sys.stderr)
        return 2

    rng = random.Random(args.rng_seed)
    fuzzer = Fuzzer(decode, args.timeout, args.max_tracebacks, args.crash_dir)
    start = time.perf_counter()
    counts = fuzz_mutations(fuzzer, seed, args.iterations, rng)
    bits, missed, full = (Counter(), [], False) if args.no_bit_sweep else sweep_single_bits(fuzzer, seed, rng)
    seconds = time.perf_counter() - start

    markdown = report(args, seed, seed_name, counts, bits, full, seconds, fuzzer)
    print(markdown)
    if not args.no_report:
        write_section(args.section, markdown)

    total = sum(counts.values(), Counter())
    failed = False
    if total["uncaught"] or bits["uncaught"]:
        escaped = total["uncaught"] + bits["uncaught"]
        print(f"FAIL: {escaped} inputs raised something other than SqueezeError, or hung", file=sys.stderr)
        failed = True
    if missed:
        print(f"FAIL: {len(missed)} single-bit flips went undetected, first at bits {missed[:10]}", file=sys.stderr)
        failed = True
    if total["decoded"]:
        print(f"warning: {total['decoded']} changed files decoded without an error", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
