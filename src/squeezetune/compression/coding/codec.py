"""Model <-> container sections: the Deep Compression encoding (step 3) and its decoder.

For every pruned or shared tensor (any compressible tensor, see
:mod:`squeezetune.compression.tensors`, carrying a mask or a shared codebook) the encoder writes
up to three sections, named by the tensor's position ``i`` among the compressible ones:

``{i}p``  kept positions (absent when nothing is pruned), in whichever coding of :mod:`.sparse`
          is smallest for the layer: relative index diffs with filler zeros, row-wise run
          lengths, or an adaptive bitmask;
``{i}w``  the cluster index of each kept weight, entropy coded; or, for a layer that is pruned but
          not shared, the kept values as raw float32;
``{i}c``  the codebook: the centroids that kept weights use, ascending, float32 or float16,
          Rice-coded (:mod:`.codebook`).

The weight tensor is flattened in its stored order or with its first two axes swapped (inputs
first), whichever codes smaller; the choice is recorded. Every other tensor of the state dict
(biases, batch-norm statistics, layers left dense) goes into section ``r`` in its own dtype (float16
with ``float_bits=16``), split into byte planes that are entropy coded apart; a tensor the state dict
holds under two keys (tied weights: one parameter in two modules) is stored once, and meta key ``tie``
maps each further key to the first (a reader that predates the key refuses such a file, saying it
lacks the further key).
Section ``m`` is zlib-compressed JSON naming the task, each layer's shape, order, position
coding (key ``pc``; absent for relative indices, the only coding of older files), index bits,
cluster count, entry count and coders, the raw tensors, and (after structured pruning) the
shrunk architecture. The decoder rebuilds the model bit-exactly from the file alone, given the
task's architecture.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from squeezetune.compression.coding.codebook import (
    pack_codebook,
    sort_codebook,
    unpack_codebook,
)
from squeezetune.compression.coding.container import pack_sections
from squeezetune.compression.coding.sparse import PositionCoding, decode_mask, encode_mask
from squeezetune.compression.coding.streams import Coder, StreamStats, decode_stream, smallest_stream
from squeezetune.compression.coding.varint import encode_varint, read_varint
from squeezetune.compression.report import TensorRecord
from squeezetune.compression.stages import StageConfig
from squeezetune.compression.tensors import Target, compressible
from squeezetune.compression.unstructured.pruning import mask_of, plain_state_dict
from squeezetune.compression.unstructured.sharing import shared_of
from squeezetune.errors import SqueezeError


class CoderChoice(str, Enum):
    HUFFMAN = "huffman"
    ANS = "ans"
    RAW = "raw"
    AUTO = "auto"


class PositionChoice(str, Enum):
    """How kept positions are coded: one coding of :mod:`.sparse` for every tensor, or the smallest per tensor."""

    AUTO = "auto"
    RELATIVE = "relative"
    RUNS = "runs"
    BITMASK = "bitmask"


@dataclass(frozen=True)
class EncodeConfig(StageConfig):
    """How the final model is coded into the container (the recipe's ``encode`` entry).

    ``coder`` is ``huffman``, ``ans``, ``raw`` or ``auto`` (the smallest of the three, per stream);
    ``index_bits`` the width of a relative-index symbol (1-16) or ``auto`` (per tensor, the width
    whose position stream codes smallest); ``float_bits`` 32 or 16 for codebooks, kept values of
    unshared tensors, biases and every other raw tensor (the model is rounded to match first, so
    what is measured is what decodes); ``positions`` ``auto`` (per tensor, the smallest of relative
    indices, row run lengths and an adaptive bitmask) or one of ``relative``, ``runs``, ``bitmask``.
    """

    stage: ClassVar[str] = "encode"
    index_bits: int | str = 5
    coder: CoderChoice = CoderChoice.AUTO
    float_bits: int = 32
    positions: PositionChoice = PositionChoice.AUTO

    def __post_init__(self) -> None:
        if self.index_bits != "auto" and (isinstance(self.index_bits, bool) or not isinstance(self.index_bits, int) or not 1 <= self.index_bits <= 16):
            raise SqueezeError(f"index_bits={self.index_bits!r} must be an integer in [1, 16] or 'auto'")
        if self.float_bits not in (16, 32):
            raise SqueezeError(f"float_bits={self.float_bits!r} must be 16 or 32")


_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64, "i64": torch.int64, "i32": torch.int32, "u8": torch.uint8, "b": torch.bool}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


@dataclass
class Encoded:
    sections: dict[str, bytes]
    layers: list[TensorRecord]
    """One record per coded (pruned or shared) tensor."""
    raw_bytes: int
    meta_bytes: int

    @property
    def file_bytes(self) -> int:
        return len(pack_sections(self.sections))


def _coders(choice: str) -> list[Coder]:
    return [Coder.HUFFMAN, Coder.ANS, Coder.RAW] if choice == "auto" else [Coder(choice)]


def _code(symbols: np.ndarray, alphabet: int, choice: str) -> tuple[bytes, StreamStats]:
    return smallest_stream(symbols, alphabet, _coders(choice))


def _stats_dict(stats: StreamStats) -> dict[str, Any]:
    d = asdict(stats)
    d["coder"] = Coder(stats.coder).value
    return d


def _flat(t: torch.Tensor, order: int) -> torch.Tensor:
    return (t.transpose(0, 1) if order else t).reshape(-1)


def _codings(choice: str) -> tuple[PositionCoding, ...]:
    return tuple(PositionCoding) if choice == "auto" else (PositionCoding(choice),)


def _encode_layer(index: int, target: Target, index_bits: int | str, coder: str, fdt: str, positions: str) -> tuple[dict[str, bytes], dict, TensorRecord] | None:
    shared, mask = shared_of(target.module, target.attr), mask_of(target.module, target.attr)
    if shared is None and mask is None:
        return None
    name = target.name
    weight = target.tensor.detach().float().cpu()
    best = None
    for order in (0, 1):
        alive = _flat(mask.cpu(), order).bool().numpy() if mask is not None else np.ones(weight.numel(), dtype=bool)
        sections: dict[str, bytes] = {}
        streams: dict[str, dict] = {}
        dense = bool(alive.all())
        bits, fillers = 0, 0
        meta: dict[str, Any] = {"n": target.module_name, "s": list(weight.shape), "o": order}
        if target.attr != "weight":
            meta["a"] = target.attr
        if dense:
            # A dense layer has no position stream: its width is only range-checked on decoding.
            meta["b"], meta["e"] = 5 if index_bits == "auto" else index_bits, int(weight.numel())
        else:
            rows = weight.shape[order] if weight.dim() > 1 else 1
            coded, tried = encode_mask(alive.reshape(rows, -1), index_bits, _coders(coder), _codings(positions))
            sections[f"{index}p"], bits, fillers = coded.data, coded.index_bits, coded.fillers
            streams["positions"] = {**coded.report(), "tried": tried}
            if coded.coding is PositionCoding.RELATIVE:
                meta["b"], meta["e"], meta["cp"] = bits, coded.entries, coded.coder.value
            else:
                meta["e"], meta["pc"] = coded.entries, coded.coding.value
        if shared is not None:
            # Only the centroids some kept weight uses are stored; labels are renumbered to match.
            # The codebook is sorted (for its compact coding) and the labels renumbered to match.
            used, labels = np.unique(_flat(shared.labels.cpu(), order).numpy()[alive], return_inverse=True)
            centroids = shared.codebook.detach().float().cpu().numpy()[used].astype(fdt)
            by_value = sort_codebook(centroids)
            rank = np.empty_like(by_value)
            rank[by_value] = np.arange(len(by_value))
            k = len(used)
            sections[f"{index}w"], stats = _code(rank[labels], k, coder)
            streams["weights"] = _stats_dict(stats)
            sections[f"{index}c"] = pack_codebook(centroids[by_value], 16 if fdt == "<f2" else 32)
            meta["k"], meta["cw"] = k, streams["weights"]["coder"]
        else:
            sections[f"{index}w"] = _flat(weight, order).numpy()[alive].astype(fdt).tobytes()
            meta["k"] = 0
        size = sum(len(v) for v in sections.values())
        report = TensorRecord(
            name=name,
            kind=target.kind,
            shape=list(weight.shape),
            action="pruned+shared" if shared is not None and mask is not None else "pruned" if mask is not None else "shared",
            weights=int(weight.numel()),
            kept=int(alive.sum()),
            clusters=meta["k"],
            index_bits=bits,
            fillers=fillers,
            order="inputs-first" if order else "outputs-first",
            coded_bytes=size,
            streams=streams,
        )
        if best is None or size < best[2].coded_bytes:
            best = (sections, meta, report)
        if dense or weight.dim() < 2:
            break
    return best


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _pack_planes(tensors: list[torch.Tensor], coder: str) -> tuple[bytes, list[str]]:
    """Raw tensors, grouped by element size, each group split into byte planes and each plane coded.

    The high byte of a float (sign and exponent) has far lower entropy than its mantissa bytes,
    so coding the planes apart shrinks biases and batch-norm statistics without changing a bit.
    """
    out, coders = bytearray(), []
    for width in dict.fromkeys(t.element_size() for t in tensors):
        group = [t.reshape(-1).view(torch.uint8).numpy() for t in tensors if t.element_size() == width]
        planes = np.concatenate(group).reshape(-1, width)
        for j in range(width):
            data, stats = _code(planes[:, j], 256, coder)
            out += encode_varint(len(data)) + data
            coders.append(Coder(stats.coder).value)
    return bytes(out), coders


def _unpack_planes(data: bytes, rest: list, coders: list[str]) -> dict[str, torch.Tensor]:
    entries = [(key, _DTYPES[dtype_name], [int(d) for d in shape]) for key, dtype_name, shape in rest]
    blobs, at, c = {}, 0, 0
    for width in dict.fromkeys(_itemsize(dtype) for _, dtype, _ in entries):
        count = sum(int(np.prod(shape)) for _, dtype, shape in entries if _itemsize(dtype) == width)
        planes = np.empty((count, width), dtype=np.uint8)
        for j in range(width):
            length, at = read_varint(data, at, f"length of raw section plane {c}")
            plane = decode_stream(data[at : at + length], Coder(coders[c]), expected=count)
            if at + length > len(data):
                raise SqueezeError(f"raw section plane {c} runs past the section's {len(data)} bytes")
            planes[:, j] = plane
            at, c = at + length, c + 1
        blobs[width] = [planes.reshape(-1).tobytes(), 0]
    if at != len(data) or c != len(coders):
        raise SqueezeError(f"raw section holds {len(data)} bytes, expected {at}")
    state = {}
    for key, dtype, shape in entries:
        blob = blobs[_itemsize(dtype)]
        nbytes = int(np.prod(shape)) * _itemsize(dtype)
        chunk = bytearray(blob[0][blob[1] : blob[1] + nbytes])
        state[key] = torch.frombuffer(chunk, dtype=dtype).reshape(shape).clone() if nbytes else torch.zeros(shape, dtype=dtype)
        blob[1] += nbytes
    return state


def encode_model(
    model: nn.Module,
    *,
    task: str,
    index_bits: int | str | dict[str, int | str] = 5,
    coder: str = "auto",
    float_bits: int = 32,
    spec: dict | None = None,
    positions: str = "auto",
) -> Encoded:
    """Encode a (pruned and/or shared) model into container sections.

    ``index_bits`` may be one width for all layers or a per-layer mapping (default 5); ``"auto"``
    picks, per layer, the width of :data:`.sparse.AUTO_INDEX_BITS` whose position stream codes smallest.
    ``positions`` is a :class:`.sparse.PositionCoding` for every layer, or ``"auto"`` (default):
    per layer, the smallest of relative indices (at that width), row-wise run lengths (at that
    width) and the adaptive bitmask, relative indices on ties.
    ``coder`` is ``huffman``, ``ans``, ``raw`` or ``auto`` (the smallest of the three per stream).
    ``float_bits=16`` stores codebooks, unshared kept values and raw floating-point tensors as
    float16; call :func:`round_floats` on the model first so that decoding stays bit-exact.
    """
    coder, positions = getattr(coder, "value", coder), getattr(positions, "value", positions)
    if positions != "auto" and positions not in {c.value for c in PositionCoding}:
        raise SqueezeError(f"positions={positions!r} must be 'auto' or one of {[c.value for c in PositionCoding]}")
    fdt = {32: "<f4", 16: "<f2"}[float_bits]
    sections: dict[str, bytes] = {}
    layers_meta, reports, covered = [], [], set()
    for index, (name, target) in enumerate(compressible(model).items()):
        bits = index_bits.get(name, 5) if isinstance(index_bits, dict) else index_bits
        encoded = _encode_layer(index, target, bits, coder, fdt, positions)
        if encoded is None:
            continue
        layer_sections, meta, report = encoded
        meta["i"] = index
        sections.update(layer_sections)
        layers_meta.append(meta)
        reports.append(report)
        covered.add(target.key)
    rest, tensors, tie, first = [], [], {}, {}
    for key, tensor in plain_state_dict(model).items():
        if key in covered or key.endswith("num_batches_tracked"):
            continue
        same = _storage(tensor)
        if same is not None and same in first:  # tied: this memory is already stored under another key
            tie[key] = first[same]
            continue
        if same is not None:
            first[same] = key
        t = tensor.detach().cpu().contiguous()
        if float_bits == 16 and t.dtype == torch.float32:
            t = t.half()
        if t.dtype not in _DTYPE_NAMES:
            raise SqueezeError(f"tensor {key!r} has dtype {t.dtype}: expected one of {sorted(map(str, _DTYPE_NAMES))}")
        rest.append([key, _DTYPE_NAMES[t.dtype], list(t.shape)])
        tensors.append(t)
    sections["r"], raw_coders = _pack_planes(tensors, coder)
    meta = {"task": task, "layers": layers_meta, "rest": rest, "rc": raw_coders, "fb": float_bits}
    if tie:
        meta["tie"] = tie
    if spec is not None:
        meta["spec"] = spec
    sections = {"m": zlib.compress(json.dumps(meta, separators=(",", ":")).encode(), 9), **sections}
    return Encoded(sections=sections, layers=reports, raw_bytes=len(sections["r"]), meta_bytes=len(sections["m"]))


def _storage(t: torch.Tensor) -> tuple | None:
    """What makes two state-dict entries one tensor: the same memory, shape, strides and dtype
    (``None`` for an empty tensor, whose address says nothing)."""
    if t.numel() == 0:
        return None
    return (str(t.device), t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)


def _ties(meta: dict) -> dict[str, str]:
    """Meta key ``tie``: each key stored once under another, checked to name a raw tensor of the
    file, and to be a key the file stores nothing else under."""
    tie = meta.get("tie", {})
    if not isinstance(tie, dict):
        raise SqueezeError(f"container meta key 'tie' is {type(tie).__name__}: expected a mapping of tensor keys")
    raw = [str(key) for key, _, _ in meta["rest"]]
    stored = {*raw, *(tensor_key(m) for m in meta["layers"])}
    for alias, source in tie.items():
        if not isinstance(source, str) or source not in raw:
            raise SqueezeError(f"container ties tensor {alias!r} to {source!r}, which is not a raw tensor of the file: expected one of {raw[:8]}")
        if alias in stored:
            raise SqueezeError(f"container ties tensor {alias!r} to {source!r}, but also stores {alias!r} itself: expected a key stored once")
    return tie


@torch.no_grad()
def round_floats(model: nn.Module, float_bits: int = 16) -> nn.Module:
    """Round what ``encode_model(float_bits=16)`` stores as float16 to float16 precision, in place.

    That is every shared codebook, every plain (unparametrized) floating-point parameter and
    buffer, and the weights of layers that are pruned but not shared.
    """
    if float_bits == 32:
        return model
    for t in compressible(model).values():
        shared = shared_of(t.module, t.attr)
        if shared is not None:
            shared.codebook.copy_(shared.codebook.half().float())
        elif mask_of(t.module, t.attr) is not None:
            original = t.module.parametrizations[t.attr].original
            original.copy_(original.half().float())
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if "parametrizations" not in name.split(".") and tensor.dtype == torch.float32:
            tensor.copy_(tensor.half().float())
    return model


def read_meta(sections: dict[str, bytes]) -> dict[str, Any]:
    """The decoded JSON meta of a container's sections."""
    if "m" not in sections:
        raise SqueezeError("container has no meta section 'm': expected a squeezetune model container")
    try:
        meta = json.loads(zlib.decompress(sections["m"]))
    except (zlib.error, ValueError) as exc:
        raise SqueezeError(f"container meta section is unreadable: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("task"), str) or not isinstance(meta.get("layers"), list):
        raise SqueezeError("container meta is malformed: expected task and layers entries")
    return meta


def _decode_layer(sections: dict[str, bytes], m: dict, fb: int) -> torch.Tensor:
    shape, order, k, entries = m["s"], int(m["o"]), int(m["k"]), int(m["e"])
    fdt = {32: "<f4", 16: "<f2"}[fb]
    n = int(np.prod(shape))
    i = int(m["i"])
    if "pc" in m or "cp" in m:
        coding = m.get("pc", PositionCoding.RELATIVE.value)
        if coding not in {c.value for c in PositionCoding}:
            raise SqueezeError(f"layer {m['n']!r}: position coding {coding!r} is unknown; expected one of {[c.value for c in PositionCoding]}")
        rows = int(shape[order]) if len(shape) > 1 else 1
        try:
            positions = decode_mask(sections[f"{i}p"], coding, rows, n // rows if rows else 0, entries=entries, index_bits=int(m.get("b", 0)), coder=m.get("cp", "ans"))
        except SqueezeError as exc:
            raise SqueezeError(f"layer {m['n']!r}: {exc}") from None
    else:
        bits = int(m["b"])
        if not 1 <= bits <= 16 or entries != n:
            raise SqueezeError(f"layer {m['n']!r}: dense layer has index_bits={bits} and {entries} entries; expected [1, 16] and {n}")
        positions = np.arange(n, dtype=np.int64)
    if k:
        labels = decode_stream(sections[f"{i}w"], Coder(m["cw"]), expected=len(positions))
        if not 1 <= k <= 1 << 16:
            raise SqueezeError(f"layer {m['n']!r}: k={k} clusters, expected 1..65536")
        codebook = unpack_codebook(sections[f"{i}c"], k, fb)
        if len(labels) and labels.max() >= k:
            raise SqueezeError(f"layer {m['n']!r}: weight stream names a centroid beyond its k={k}")
        values = codebook[np.asarray(labels, dtype=np.int64)]
    else:
        values = np.frombuffer(sections[f"{i}w"], dtype=fdt)
        if len(values) != len(positions):
            raise SqueezeError(f"layer {m['n']!r}: {len(values)} raw values for {len(positions)} kept weights")
    flat = torch.zeros(n, dtype=torch.float32)
    flat[torch.from_numpy(positions)] = torch.from_numpy(values.astype(np.float32))
    t_shape = [shape[1], shape[0], *shape[2:]] if order else shape
    w = flat.reshape(t_shape)
    return (w.transpose(0, 1) if order else w).contiguous()


def tensor_key(m: dict) -> str:
    """The state-dict key of a coded tensor's meta entry (``weight`` of module ``n`` unless ``a`` names another)."""
    name, attr = str(m["n"]), str(m.get("a", "weight"))
    return f"{name}.{attr}" if name else attr


def _check_shape(key: str, shape: list, expected: dict[str, torch.Tensor]) -> None:
    if key not in expected:
        raise SqueezeError(f"container holds tensor {key!r} that the task's model lacks: expected one of {sorted(expected)[:8]}...")
    if not isinstance(shape, list) or tuple(expected[key].shape) != tuple(shape):
        got = tuple(shape) if isinstance(shape, list) else shape
        raise SqueezeError(f"container tensor {key!r} has shape {got}, the task's model expects {tuple(expected[key].shape)}")


def decode_sections(sections: dict[str, bytes], model: nn.Module) -> nn.Module:
    """Load the weights held in ``sections`` into ``model`` (built for the container's task)."""
    meta = read_meta(sections)
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = {}
    try:
        # Shapes are checked against the model before any stream is decoded, so what a file can
        # make the decoder allocate is bounded by the model it is decoded into.
        tie = _ties(meta)
        declared = [(tensor_key(m), m["s"]) for m in meta["layers"]] + [(key, shape) for key, _, shape in meta["rest"]]
        shapes = {key: shape for key, _, shape in meta["rest"]}
        declared += [(alias, shapes[source]) for alias, source in tie.items()]
        for key, shape in declared:
            _check_shape(key, shape, expected)
        for m in meta["layers"]:
            state[tensor_key(m)] = _decode_layer(sections, m, meta.get("fb", 32))
        state.update(_unpack_planes(sections["r"], meta["rest"], meta["rc"]))
        state.update({alias: state[source] for alias, source in tie.items()})
    except SqueezeError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError, OverflowError, MemoryError) as exc:
        raise SqueezeError(f"container content is inconsistent: {type(exc).__name__}: {exc}") from None
    missing = sorted(set(expected) - set(state))
    if missing:
        raise SqueezeError(f"container lacks tensor {missing[0]!r} of the task's model")
    model.load_state_dict(state, strict=False)
    return model.eval()


@dataclass
class CodedTensor:
    """One tensor as a container holds it (see :func:`describe`)."""

    key: str
    shape: list[int]
    coded: bool
    """True for a pruned or shared tensor with its own sections; False for one in the raw section."""
    dtype: str = "f32"
    entries: int = 0
    clusters: int = 0
    index_bits: int = 0
    positions: str = ""
    """The position coding (``relative``, ``runs``, ``bitmask``; empty for an unpruned tensor)."""
    order: str = ""
    bytes: int = 0
    tied_to: str = ""
    """The key this tensor is stored under (tied weights, stored once), else empty."""


@dataclass
class ContainerInfo:
    task: str
    float_bits: int
    tensors: list[CodedTensor]
    raw_bytes: int
    meta_bytes: int
    spec: dict | None


def describe(sections: dict[str, bytes]) -> ContainerInfo:
    """What a container holds, tensor by tensor, without decoding any stream."""
    meta = read_meta(sections)
    tensors = []
    try:
        for m in meta["layers"]:
            i = m["i"]
            tensors.append(
                CodedTensor(
                    key=tensor_key(m),
                    shape=[int(d) for d in m["s"]],
                    coded=True,
                    entries=int(m["e"]),
                    clusters=int(m["k"]),
                    index_bits=int(m["b"]) if "cp" in m else 0,
                    positions=str(m.get("pc", "relative" if "cp" in m else "")),
                    order="inputs-first" if m["o"] else "outputs-first",
                    bytes=sum(len(sections.get(f"{i}{s}", b"")) for s in "pwc"),
                )
            )
        raw = {}
        for key, dtype, shape in meta["rest"]:
            raw[str(key)] = CodedTensor(key=str(key), shape=[int(d) for d in shape], coded=False, dtype=str(dtype))
            tensors.append(raw[str(key)])
        for alias, source in _ties(meta).items():
            tensors.append(CodedTensor(key=str(alias), shape=raw[source].shape, coded=False, dtype=raw[source].dtype, tied_to=source))
    except SqueezeError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SqueezeError(f"container meta is malformed: {type(exc).__name__}: {exc}") from None
    return ContainerInfo(str(meta["task"]), int(meta.get("fb", 32)), tensors, len(sections.get("r", b"")), len(sections["m"]), meta.get("spec"))


def transcode(sections: dict[str, bytes], coder: str) -> dict[str, bytes]:
    """Re-code every entropy-coded stream of a container's sections with ``coder``; lossless.

    The symbols are unchanged, so the decoded model is identical; only the coded sizes differ.
    Positions in run lengths or a bitmask keep their coding; the streams inside are re-coded.
    """
    meta = read_meta(sections)
    out = dict(sections)
    for m in meta["layers"]:
        if "pc" in m:
            name, order = f"{m['i']}p", int(m["o"])
            rows = int(m["s"][order]) if len(m["s"]) > 1 else 1
            mask = np.zeros(int(np.prod(m["s"])), dtype=bool)
            mask[decode_mask(sections[name], m["pc"], rows, len(mask) // rows, entries=int(m["e"]))] = True
            coded, _ = encode_mask(mask.reshape(rows, -1), "auto", _coders(coder), (m["pc"],))
            out[name], m["e"] = coded.data, coded.entries
        for key, section in (("cp", "p"), ("cw", "w")):
            if key in m:
                name = f"{m['i']}{section}"
                symbols = decode_stream(sections[name], Coder(m[key]))
                alphabet = 1 << int(m["b"]) if section == "p" else int(m["k"])
                out[name], stats = _code(symbols, alphabet, coder)
                m[key] = Coder(stats.coder).value
    out["m"] = zlib.compress(json.dumps(meta, separators=(",", ":")).encode(), 9)
    return out
