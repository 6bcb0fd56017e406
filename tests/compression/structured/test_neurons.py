from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from squeezetune.compression.architecture import architecture_spec
from squeezetune.compression.coding import codec
from squeezetune.compression.coding.container import pack_sections
from squeezetune.compression.decode import decode_bytes
from squeezetune.compression.stages import Context, apply_stage
from squeezetune.compression.structured.gather import GatheredLinear, gather_unused_inputs, ungather
from squeezetune.compression.structured.neurons import NeuronsConfig
from squeezetune.compression.structured.shrink import shrunk_spec
from squeezetune.compression.unstructured.pruning import apply_mask, mask_of
from squeezetune.compression.unstructured.sharing import share_layer
from squeezetune.errors import SqueezeError
from squeezetune.tasks import Split, Task


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 12)
        self.fc2 = nn.Linear(12, 8)
        self.fc3 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc1 = nn.Linear(8 * 2 * 2, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv1(x))
        x = self.pool(self.conv2(x))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def _mlp_with_dead_units() -> MLP:
    torch.manual_seed(0)
    model = MLP()
    with torch.no_grad():
        model.fc2.weight[:, 3] = 0  # fc1 unit 3: no outputs
        model.fc1.weight[5] = 0  # fc1 unit 5: no inputs, a constant relu(bias) folded into fc2's bias
        model.fc1.bias[5] = 0.7
        model.fc3.weight[:, 6] = 0  # fc2 unit 6: no outputs
        model.fc1.weight[:, [0, 1, 19]] = 0  # three input features nobody reads
        model.fc1.weight[0, 7] = 0  # pruned weights that stay masked
    for m in (model.fc1, model.fc2, model.fc3):
        apply_mask(m, m.weight.detach().ne(0).float())
    return model.eval()


def _run(model: nn.Module, x: torch.Tensor, **kw) -> nn.Module:
    ctx = Context(teacher=model, example=x[:1], train=Split(x, torch.zeros(len(x), dtype=torch.long)))
    return apply_stage(model, NeuronsConfig(**kw), ctx)


def _round_trip(model: nn.Module, dense: nn.Module, factory) -> nn.Module:
    spec = architecture_spec(model, dense)
    data = pack_sections(codec.encode_model(model, task="toy", spec=spec).sections)
    task = Task("toy", "toy", factory, lambda _: (None, None))
    return decode_bytes(data, task=task)


def test_dead_units_and_unread_inputs_go_and_the_outputs_stay():
    model = _mlp_with_dead_units()
    x = torch.randn(64, 1, 4, 5)
    before = model(x).detach()
    small = _run(model, x)
    assert small.fc1.weight.shape == (10, 17)  # 12 - 2 units, 20 - 3 inputs
    assert isinstance(small.fc1, GatheredLinear) and small.fc1.inputs.tolist() == [False, False] + [True] * 17 + [False]
    assert small.fc2.weight.shape == (7, 10) and small.fc3.weight.shape == (3, 7)
    torch.testing.assert_close(small(x), before, atol=1e-5, rtol=1e-5)
    assert mask_of(small.fc1) is not None and int(mask_of(small.fc1).sum()) == int(small.fc1.weight.ne(0).sum())
    decoded = _round_trip(small, MLP(), MLP)
    assert decoded.fc1.weight.shape == (10, 17) and decoded.fc2.weight.shape == (7, 10)
    torch.testing.assert_close(decoded(x), before, atol=1e-5, rtol=1e-5)


def test_dead_filters_go_from_a_convolutional_net():
    torch.manual_seed(0)
    model = ConvNet().eval()
    with torch.no_grad():
        model.conv2.weight[:, 2] = 0  # conv1 filter 2: no outputs
        model.conv2.weight[4] = 0  # conv2 filter 4: a constant through pooling, folded into fc1
        model.conv2.bias[4] = 0.3
        model.fc1.weight[:, 1] = 0  # one input feature of fc1 nobody reads
    x = torch.randn(32, 1, 14, 14)
    before = model(x).detach()
    small = _run(model, x)
    assert small.conv1.weight.shape == (5, 1, 3, 3) and small.conv2.weight.shape == (7, 5, 3, 3)
    assert small.fc1.weight.shape == (10, 27)  # 7 channels x 4 positions, one of them unread
    torch.testing.assert_close(small(x), before, atol=1e-5, rtol=1e-5)
    decoded = _round_trip(small, ConvNet(), ConvNet)
    torch.testing.assert_close(decoded(x), before, atol=1e-5, rtol=1e-5)


def test_a_layer_keeps_one_unit_when_all_are_dead():
    torch.manual_seed(0)
    model = MLP().eval()
    with torch.no_grad():
        model.fc3.weight.zero_()
    x = torch.randn(8, 1, 4, 5)
    small = _run(model, x, inputs=False)
    assert small.fc2.weight.shape == (1, 12) and small.fc3.weight.shape == (3, 1)
    torch.testing.assert_close(small(x), model(x))


def test_nothing_dead_leaves_the_model_as_it_is():
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(8, 1, 4, 5)
    small = _run(model, x)
    assert shrunk_spec(small) == shrunk_spec(model)
    torch.testing.assert_close(small(x), model(x))


def test_shared_tensors_cannot_be_cut():
    model = _mlp_with_dead_units()
    share_layer(model.fc2, k=4)
    with pytest.raises(SqueezeError, match=r"neurons cannot cut shared tensor 'fc2': expected the neurons stage before share"):
        _run(model, torch.randn(8, 1, 4, 5))


def test_gather_and_ungather_keep_the_function():
    torch.manual_seed(0)
    model = MLP().eval()
    with torch.no_grad():
        model.fc1.weight[:, 4:9] = 0
    x = torch.randn(5, 20)
    expected = model(x)
    gathered = gather_unused_inputs(copy.deepcopy(model))
    assert gathered == {"fc1": (15, 20)}
    g = copy.deepcopy(model)
    gather_unused_inputs(g)
    torch.testing.assert_close(g(x), expected)
    back = ungather(g)
    assert type(back.fc1) is nn.Linear and back.fc1.weight.shape == (12, 20)
    torch.testing.assert_close(back(x), expected)


def test_a_container_whose_input_selection_disagrees_is_refused():
    torch.manual_seed(0)
    model = MLP().eval()
    gather_unused_inputs(model)  # nothing unread: nothing gathered
    assert type(model.fc1) is nn.Linear
    layer = GatheredLinear(20, 15, 12)
    state = layer.state_dict()
    state["inputs"] = torch.ones(20, dtype=torch.bool)
    with pytest.raises(SqueezeError, match=r"selects 20 of 20 input features: expected 15 of 20"):
        layer.load_state_dict(state)


def test_a_container_spec_cannot_widen_a_gathered_layer():
    from squeezetune.compression.architecture import ARCH_FORMAT
    from squeezetune.compression.decode import _apply_checked_spec

    spec = {"format": ARCH_FORMAT, "modules": {"fc1": {"type": "GatheredLinear", "dense_features": 21, "in_features": 17, "out_features": 12, "bias": True}}}
    with pytest.raises(SqueezeError, match=r"container spec gives layer 'fc1' dense_features=21: expected at most 20, the input width of the task's layer"):
        _apply_checked_spec(MLP(), spec)


def test_structured_pruning_after_the_neurons_stage_is_a_one_line_error():
    from squeezetune.compression.structured._graph import StructureGraph
    from squeezetune.compression.unstructured.pruning import bake

    model = _run(_mlp_with_dead_units(), torch.randn(16, 1, 4, 5))
    with pytest.raises(
        SqueezeError, match=r"layer 'fc1' reads 17 of 20 input features \(the neurons stage made it\): expected the stages that trace channels \(structured, merge, decompose, strided\) before neurons"
    ):
        StructureGraph(bake(model), torch.zeros(1, 1, 4, 5))


def test_decompose_refuses_a_gathered_layer_in_one_line():
    from squeezetune.compression.decomposition.lowrank import LowRank

    layer = GatheredLinear(20, 17, 12)
    assert "GatheredLinear" in LowRank().refuses(layer) and LowRank().refuses(nn.Linear(20, 12)) is None


class HiddenReader(nn.Module):
    """``head`` reads fc1's units through a bare parameter, which DepGraph reads as a pass-through."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.mix = nn.Parameter(torch.randn(8, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(torch.relu(self.fc1(x)) @ self.mix))


class Volume(nn.Module):
    """A Conv3d flattened into a bare-parameter matmul and a GRUCell: DepGraph's indices run past the conv's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 6, 3)
        self.mix = nn.Parameter(torch.randn(6 * 8, 16) * 0.1)
        self.gru = nn.GRUCell(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(1) @ self.mix
        return self.head(self.gru(torch.relu(h)))


def test_a_reader_depgraph_cannot_see_keeps_the_group_whole():
    torch.manual_seed(0)
    model = HiddenReader()
    with torch.no_grad():
        model.head.weight[:, :3] = 0  # by the traced graph fc1's units 0-2 have no outputs; mix still reads them
    x = torch.randn(64, 4)
    out = _run(copy.deepcopy(model), x)
    assert out.fc1.out_features == 8
    torch.testing.assert_close(out(x), model(x))


def test_a_model_depgraph_mistraces_runs_and_keeps_its_outputs():
    torch.manual_seed(0)
    model = Volume()
    with torch.no_grad():
        model.conv.weight[2] = 0
        model.head.weight[:, 5] = 0
    x = torch.randn(32, 2, 4, 4, 4)
    out = _run(copy.deepcopy(model), x)
    assert out.conv.out_channels == 6  # its readers are not traceable, so the conv stays whole
    torch.testing.assert_close(out(x), model(x))


def test_a_layer_its_module_reads_past_forward_is_not_gathered():
    """nn.TransformerEncoderLayer's fused inference path reads linear1.weight itself: gathering
    linear1's inputs would break it, so that layer stays plain while the head is gathered."""
    from squeezetune.tasks.shapes import TinyTransformer

    torch.manual_seed(0)
    model = TinyTransformer().eval()
    with torch.no_grad():
        model.encoder.layers[0].linear1.weight[:, :20] = 0
        model.head.weight[:, :20] = 0
    tokens = torch.randint(0, 17, (16, 64))
    expected = model(tokens)
    done = gather_unused_inputs(model, tokens)
    assert list(done) == ["head"] and type(model.encoder.layers[0].linear1) is nn.Linear
    torch.testing.assert_close(model(tokens), expected)


class VolumeGRU(nn.Module):
    """A Conv3d whose channels a GRU reads after a permute and flatten: DepGraph's grouping of the
    conv fails inside Torch-Pruning (an index past its own offsets)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.gru = nn.GRU(4 * 16, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).permute(0, 2, 1, 3, 4).flatten(2)
        return self.head(self.gru(h)[0][:, -1])


def test_a_layer_depgraph_cannot_group_stays_whole_and_says_why():
    from squeezetune.compression.structured._graph import StructureGraph

    torch.manual_seed(0)
    model = VolumeGRU().eval()
    with torch.no_grad():
        model.head.weight[:, 2] = 0  # one GRU output nobody reads
    x = torch.randn(16, 1, 3, 4, 4)
    graph = StructureGraph(copy.deepcopy(model), x[:1])
    assert "DepGraph cannot group its channels" in graph.unprunable["conv"]
    with pytest.raises(SqueezeError, match=r"layer 'conv' cannot be pruned structurally: DepGraph cannot group"):
        graph.resolve("conv")
    said: list[str] = []
    ctx = Context(teacher=model, example=x[:1], train=Split(x, torch.zeros(len(x), dtype=torch.long)), progress=said.append)
    small = apply_stage(copy.deepcopy(model), NeuronsConfig(), ctx)
    assert small.conv.out_channels == 4 and small.head.in_features == 7
    torch.testing.assert_close(small(x), model(x))
    assert any(": conv keeps all its channels: DepGraph cannot group its channels (" in line for line in said), said


def test_structured_on_a_model_without_groups_names_each_reason():
    from squeezetune.compression.structured.stage import StructuredConfig

    config = StructuredConfig(method="l1", macs_target=0.5)
    with pytest.raises(SqueezeError, match=r"no channel group DepGraph can shrink \(.*conv: DepGraph cannot group its channels") as info:
        config.validate(VolumeGRU(), torch.randn(1, 1, 3, 4, 4))
    assert "\n" not in str(info.value)


class Stacked(nn.Module):
    """A GRU feeding a bidirectional LSTM: DepGraph cannot trace the model at all."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, 8, batch_first=True)
        self.lstm = nn.LSTM(8, 8, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(self.gru(x)[0])
        return self.head(torch.cat([h[0], h[1]], 1))


class UpDown(nn.Module):
    """A transposed convolution between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(1, 6, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.up(torch.relu(self.enc(x)))).mean((2, 3)))


def test_a_model_depgraph_cannot_trace_keeps_its_channels_and_says_why():
    torch.manual_seed(0)
    model = Stacked().eval()
    with torch.no_grad():
        model.head.weight[:, 4:12] = 0
    x = torch.randn(16, 5, 6)
    said: list[str] = []
    ctx = Context(teacher=model, example=x[:1], train=Split(x, torch.zeros(len(x), dtype=torch.long)), progress=said.append)
    small = apply_stage(copy.deepcopy(model), NeuronsConfig(), ctx)
    assert small.head.in_features == 8  # unread inputs still go
    torch.testing.assert_close(small(x), model(x))
    assert any("every layer keeps all channels: cannot trace the model for structural pruning" in line for line in said), said


def test_a_transposed_convolution_and_its_producer_stay_whole():
    from squeezetune.compression.structured._graph import StructureGraph

    torch.manual_seed(0)
    model = UpDown().eval()
    with torch.no_grad():
        model.up.weight[2] = 0  # enc channel 2: read by nobody (ConvTranspose weights are (in, out, ...))
        model.head.weight[:, 1] = 0
    x = torch.randn(16, 1, 8, 8)
    graph = StructureGraph(copy.deepcopy(model), x[:1])
    assert "transposed convolution" in graph.unprunable["up"] and "transposed convolution" in graph.unprunable["enc"]
    small = _run(copy.deepcopy(model), x)
    assert small.enc.out_channels == 6 and small.up.out_channels == 4
    torch.testing.assert_close(small(x), model(x))
