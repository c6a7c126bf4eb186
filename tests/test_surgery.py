"""Model surgery: selection (class names, dotted suffixes, 're:' patterns, callable filters,
containers, ignore, defaults), replacement and input capture."""

from __future__ import annotations

from contextlib import suppress

import pytest
import torch
from torch import nn

from lowrank.errors import LowRankError, TargetError
from lowrank.surgery import (
    CONV,
    LINEAR,
    LINEAR_OR_CONV,
    StopForward,
    capture_inputs,
    default_targets,
    replace_module,
    select_linears,
)

BERT_LINEARS = ["attention.self.query", "attention.self.key", "attention.self.value",
                "attention.output.dense", "intermediate.dense", "output.dense"]
LLAMA_LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def _all_linears(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def test_default_targets_bert(tiny_bert):
    names = list(select_linears(tiny_bert))
    expected = [f"encoder.layer.{i}.{s}" for i in range(2) for s in BERT_LINEARS]
    assert names == expected
    assert "pooler.dense" in _all_linears(tiny_bert)
    assert list(default_targets(tiny_bert)) == expected


def test_default_targets_llama(tiny_llama):
    names = list(select_linears(tiny_llama))
    expected = [f"model.layers.{i}.{s}" for i in range(2) for s in LLAMA_LINEARS]
    assert names == expected
    assert "lm_head" in _all_linears(tiny_llama)
    # GQA: k/v are narrower than q
    mods = select_linears(tiny_llama)
    q, k = mods["model.layers.0.self_attn.q_proj"], mods["model.layers.0.self_attn.k_proj"]
    assert k.out_features < q.out_features


def test_class_name_pattern(tiny_bert):
    assert list(select_linears(tiny_bert, "Linear")) == _all_linears(tiny_bert)


def test_dotted_suffix_and_exact_name(tiny_bert):
    assert list(select_linears(tiny_bert, "query")) == [
        "encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.query"]
    assert list(select_linears(tiny_bert, ["self.key"])) == [
        "encoder.layer.0.attention.self.key", "encoder.layer.1.attention.self.key"]
    assert list(select_linears(tiny_bert, "encoder.layer.1.output.dense")) == [
        "encoder.layer.1.output.dense"]
    # a suffix must end at a dot: 'uery' is not a suffix pattern of 'query'
    with pytest.raises(TargetError):
        select_linears(tiny_bert, "uery")


def test_regex_pattern(tiny_llama):
    names = list(select_linears(tiny_llama, r"re:.*layers\.1\.mlp\.(gate|up)_proj"))
    assert names == ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]
    # full match only: a partial regex matches nothing
    with pytest.raises(TargetError):
        select_linears(tiny_llama, "re:gate")


def test_container_selects_inner_linears(tiny_bert, tiny_llama):
    names = list(select_linears(tiny_bert, "attention"))
    assert names == [f"encoder.layer.{i}.{s}" for i in range(2) for s in BERT_LINEARS[:4]]
    # a container class name works too
    cls = type(tiny_llama.model.layers[0].mlp).__name__
    names = list(select_linears(tiny_llama, cls))
    assert names == [f"model.layers.{i}.mlp.{p}_proj" for i in range(2)
                     for p in ("gate", "up", "down")]
    # a regex matching a whole block
    assert list(select_linears(tiny_bert, r"re:encoder\.layer\.0")) == [
        f"encoder.layer.0.{s}" for s in BERT_LINEARS]


def test_ignore(tiny_bert, tiny_llama):
    names = list(select_linears(tiny_bert, ignore=["key", "intermediate"]))
    assert not any(n.endswith(".key") or ".intermediate." in n for n in names)
    assert len(names) == 8
    names = list(select_linears(tiny_llama, "Linear", ignore="lm_head"))
    assert names == list(select_linears(tiny_llama))
    with pytest.raises(TargetError, match="no nn.Linear"):
        select_linears(tiny_bert, "query", ignore="attention")


def test_unmatched_pattern_lists_near_misses(tiny_bert):
    with pytest.raises(TargetError) as info:
        select_linears(tiny_bert, "qurey")
    message = str(info.value)
    assert "qurey" in message and "near misses" in message and "query" in message
    assert isinstance(info.value, LowRankError) and isinstance(info.value, ValueError)
    with pytest.raises(TargetError, match="q_proj"):
        select_linears(tiny_bert, ignore="q_proj")  # ignore patterns are checked too


def test_invalid_regex(tiny_bert):
    with pytest.raises(TargetError, match="regular expression"):
        select_linears(tiny_bert, "re:([")


def test_model_without_blocks_defaults_to_all_linears():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert list(select_linears(model)) == ["0", "2"]


def test_modulelist_of_linears_is_not_a_block():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4)) for _ in range(2)])
            self.out = nn.Linear(4, 1)

    assert list(select_linears(Net())) == ["blocks.0.0", "blocks.1.0"]


def test_non_linear_target_raises(tiny_bert):
    with pytest.raises(TargetError, match="no nn.Linear"):
        select_linears(tiny_bert, "LayerNorm")


def test_conv_kind_selects_plain_convolutions_with_the_same_grammar():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1),  # 1x1: not factorized
                          nn.Conv2d(8, 8, 3, groups=2), nn.Sequential(nn.Conv2d(8, 4, 3)),
                          nn.Linear(4, 2))
    assert list(CONV.select(model)) == ["0", "3.0"]
    assert list(CONV.select(model, "3")) == ["3.0"]  # a container selects its layers
    assert list(CONV.select(model, "re:\\d", ignore=["re:0"])) == ["3.0"]
    assert list(LINEAR.select(model)) == ["4"]
    with pytest.raises(TargetError, match="invalid regular expression"):
        CONV.select(model, "re:([")
    with pytest.raises(TargetError, match="select no plain Conv2d"):
        CONV.select(model, "4")


def test_callable_filter(tiny_bert):
    def wide(name, module):
        return isinstance(module, nn.Linear) and module.out_features > 64

    assert list(select_linears(tiny_bert, wide)) == [
        f"encoder.layer.{i}.intermediate.dense" for i in range(2)]
    names = list(select_linears(tiny_bert, ignore=[wide, "query"]))
    assert len(names) == 8 and not any(n.endswith(("intermediate.dense", "query"))
                                       for n in names)
    with pytest.raises(TargetError, match="filter .* matches no module"):
        select_linears(tiny_bert, lambda name, module: False)


def test_linear_or_conv_kind():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv1d(2, 4, 3)
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.Conv2d(4, 4, 1))
                                         for _ in range(2)])
            self.head = nn.Linear(4, 1)

    net = Net()
    # default: the block linears plus every convolution, in model order
    assert list(LINEAR_OR_CONV.select(net)) == ["stem", "blocks.0.0", "blocks.0.1",
                                                "blocks.1.0", "blocks.1.1"]
    assert list(LINEAR_OR_CONV.select(net, "re:blocks\\.1.*", ignore="Linear")) == [
        "blocks.1.1"]
    with pytest.raises(TargetError, match="select no linear or conv module"):
        LINEAR_OR_CONV.select(net, "stem", ignore="Conv1d")
    with pytest.raises(TargetError, match="invalid regular expression"):
        LINEAR_OR_CONV.select(net, "re:([")


def test_replace_module():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 3)))
    new = nn.Linear(2, 5)
    replace_module(model, "1.1", new)
    assert model[1][1] is new
    replace_module(model, "0", nn.Identity())
    assert isinstance(model[0], nn.Identity)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_capture_stores_calls_and_removes_hooks():
    net = _net()
    x = torch.randn(5, 3)
    with capture_inputs({"first": net[0], "last": net[2]}) as calls:
        net(x)
        net(x)
    assert [len(calls["first"]), len(calls["last"])] == [2, 2]
    assert torch.equal(calls["first"][0].args[0], x)
    assert torch.equal(calls["last"][1].args[0], torch.relu(net[0](x)))
    assert calls["first"][0].output is None
    assert not net[0]._forward_pre_hooks and not net[2]._forward_pre_hooks


def test_capture_streams_to_a_callback_with_outputs():
    net = _net()
    x = torch.randn(5, 3)
    seen = []
    with capture_inputs({"first": net[0]}, lambda name, call: seen.append(
            (name, call.args[0].sum().item(), call.output.shape)), outputs=True) as calls:
        out = net(x)
    assert calls == {"first": []}  # nothing stored
    assert seen == [("first", x.sum().item(), torch.Size([5, 4]))]
    assert torch.equal(out, net(x)) and not net[0]._forward_hooks


def test_capture_stop_ends_the_pass_and_hooks_go_on_errors():
    net = _net()
    x = torch.randn(5, 3)
    ran = []
    net[2].register_forward_pre_hook(lambda m, a: ran.append(True))
    with capture_inputs({"first": net[0]}, stop=True) as calls:
        with pytest.raises(StopForward):
            net(x)
        with suppress(StopForward):
            net(x)
    assert len(calls["first"]) == 2 and not ran  # never reached the last layer
    with pytest.raises(RuntimeError), capture_inputs({"first": net[0]}):
        net(torch.randn(5, 7))  # wrong width: the pass fails inside the block
    assert not net[0]._forward_pre_hooks
    net(x)
    assert ran == [True]
