"""Split a network into DCQ sections and stitch them back: an ``nn.Sequential`` over its top-level
children, any other model over its torch.fx graph (``lowbit.distill.graph_sections``).

DCQ (METHODS.md section 4) cuts a network at ``K - 1`` boundaries.

An ``nn.Sequential`` whose ``forward`` is ``nn.Sequential.forward`` (every zoo model) is cut
between two top-level children, so running the sections one after the other computes exactly
what the whole model computes, and ``stitch(split(m))`` is ``m`` again: the sections hold the
same module objects under the same child names (nothing is copied), so state dicts, plans and
outputs are bitwise the same.

Any other model is traced with ``torch.fx`` and cut between two operations (graph nodes) where
exactly one tensor crosses; each section is a ``torch.fx.GraphModule`` holding the model's own
modules under their full paths (``layer1.0.conv1``), so plans, state-dict keys and outputs are
again those of the model. A cut crossed by two tensors (inside a residual block, across its
skip connection) is refused, naming both; so is a model torch.fx cannot trace. See
``graph_sections`` for the rules.

Split points:

- ``at=[names]``: each name is the *first* child (Sequential) or operation (traced graph: a node
  name such as ``layer2_0_conv1``, or a submodule path such as ``layer2``, meaning its first
  operation) of a new section (so ``at=["conv2"]`` cuts LeNet-5 right after ``pool1``).
- ``sections=K``: automatic. The model is grouped into *blocks*, each starting at a child that
  holds a Conv/Linear layer (Sequential; parameter-free children such as ReLU or pooling stay
  with the layer before them, so a boundary always falls just before a weighted layer, on a
  post-activation feature map), or at a valid cut point just before a Conv/Linear call (traced
  graph). The blocks are then partitioned into ``K`` contiguous sections minimising the sum
  of squared section costs (equivalently their variance: the most even split), by dynamic
  programming; cost = parameter count (``balance="params"``) or multiply-accumulates measured with
  forward hooks on one sample input (``balance="macs"``). If ``K`` exceeds the number of blocks,
  every child (every valid cut point) starts a block (some sections then hold no weights).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from lowbit.costs import layer_macs
from lowbit.distill.graph_sections import GraphSplit, restore_order, section_ops, stitch_graphs
from lowbit.errors import ConfigError, did_you_mean
from lowbit.nn.modules import float_type

BALANCES = ("params", "macs")

def _chains_children(model: nn.Module) -> bool:
    """Whether ``model`` is an nn.Sequential whose forward only chains its children (cut between them)."""
    return isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward


def _children(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not _chains_children(model):
        raise ConfigError(f"expected an nn.Sequential whose forward chains its children (or GraphModule sections "
                          f"from split); got {type(model).__name__}")
    children = list(model.named_children())
    if not children:
        raise ConfigError("cannot split an empty nn.Sequential")
    return children


def child_names(model: nn.Module) -> list[str]:
    """The units ``model`` is cut between, in order: the top-level child names of an
    ``nn.Sequential``, the operation (node) names of a GraphModule section or of a traced model."""
    if _chains_children(model):
        return [name for name, _ in _children(model)]
    if isinstance(model, torch.fx.GraphModule):
        return section_ops(model)
    return GraphSplit(model).names


def cut_points(model: nn.Module) -> list[str]:
    """Every name that can start section 2..K: the children after the first (``nn.Sequential``), or
    the operations of the traced graph before which exactly one tensor crosses."""
    if _chains_children(model):
        return child_names(model)[1:]
    graph = GraphSplit(model)
    return [graph.ops[i].name for i in graph.valid()]


def _has_weighted_layer(module: nn.Module) -> bool:
    return any(float_type(m) is not None for m in module.modules())


def param_costs(model: nn.Module) -> list[int]:
    """Parameter count of every top-level child (of every operation of a traced model)."""
    if not _chains_children(model):
        return GraphSplit(model).param_costs()
    return [sum(p.numel() for p in child.parameters()) for _, child in _children(model)]


def mac_costs(model: nn.Module, sample_input: torch.Tensor) -> list[int]:
    """Multiply-accumulates per sample of every top-level child's Conv/Linear layers, measured
    with forward hooks on ``sample_input`` (any batch size; the model runs in eval mode); of every
    operation of a traced model."""
    if not isinstance(sample_input, torch.Tensor) or sample_input.dim() < 2 or sample_input.shape[0] < 1:
        raise ConfigError("balance='macs' needs a sample input tensor with a batch dimension")
    if not _chains_children(model):
        return GraphSplit(model).mac_costs(sample_input)
    children = _children(model)
    index = {name: i for i, (name, _) in enumerate(children)}
    costs = [0] * len(children)
    for name, macs in layer_macs(model, sample_input).items():
        costs[index[name.split(".")[0]]] += macs
    return costs


def _balanced_cuts(costs: Sequence[int], k: int) -> list[int]:
    """Start indices of sections 2..k: ``k`` contiguous non-empty groups of ``costs`` with the
    smallest sum of squared group costs (ties: the earliest cut)."""
    n = len(costs)
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[j][m]: the smallest cost of the first m items in j groups; back[j][m]: the last cut
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    back = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for j in range(1, k + 1):
        for m in range(j, n - (k - j) + 1):
            for i in range(j - 1, m):
                value = best[j - 1][i] + (prefix[m] - prefix[i]) ** 2
                if value < best[j][m]:
                    best[j][m], back[j][m] = value, i
    cuts, m = [], n
    for j in range(k, 0, -1):
        m = back[j][m]
        cuts.append(m)
    return sorted(cuts)[1:]  # the first cut is always 0


def _check_request(sections: int, balance: str, sample_input: torch.Tensor | None) -> None:
    if isinstance(sections, bool) or not isinstance(sections, int) or sections < 1:
        raise ConfigError(f"the number of sections must be an integer >= 1, got {sections!r}")
    if balance not in BALANCES:
        raise ConfigError(f"unknown balance {balance!r}{did_you_mean(str(balance), BALANCES)}; "
                          f"choose one of {', '.join(BALANCES)}")
    if balance == "macs" and sample_input is None:
        raise ConfigError("balance='macs' needs a sample input (sample_input=) to measure MACs on")


def _graph_split_points(graph: GraphSplit, sections: int, balance: str,
                        sample_input: torch.Tensor | None) -> list[str]:
    _check_request(sections, balance, sample_input)
    costs = graph.param_costs() if balance == "params" else graph.mac_costs(sample_input)
    starts = graph.blocks(sections)
    block_costs = [sum(costs[a:b]) for a, b in zip(starts, starts[1:] + [len(costs)])]
    return [graph.names[starts[c]] for c in _balanced_cuts(block_costs, sections)]


def auto_split_points(model: nn.Module, sections: int, balance: str = "params",
                      sample_input: torch.Tensor | None = None) -> list[str]:
    """The child (operation) names that start sections 2..K of the automatic split (module doc)."""
    if not _chains_children(model):
        return _graph_split_points(GraphSplit(model), sections, balance, sample_input)
    children = _children(model)
    names = [name for name, _ in children]
    if isinstance(sections, bool) or not isinstance(sections, int) or sections < 1:
        raise ConfigError(f"the number of sections must be an integer >= 1, got {sections!r}")
    if sections > len(children):
        raise ConfigError(f"cannot split into {sections} sections: the model has only {len(children)} "
                          f"top-level children ({', '.join(names)})")
    _check_request(sections, balance, sample_input)
    costs = param_costs(model) if balance == "params" else mac_costs(model, sample_input)
    starts = [i for i, (_, child) in enumerate(children) if i > 0 and _has_weighted_layer(child)]
    starts = [0] + starts
    if sections > len(starts):  # more sections than weighted blocks: every child is a block
        starts = list(range(len(children)))
    block_costs = [sum(costs[a:b]) for a, b in zip(starts, starts[1:] + [len(children)])]
    cuts = _balanced_cuts(block_costs, sections)
    return [names[starts[c]] for c in cuts]


def _as_points(at: Sequence[str] | str) -> list[str]:
    at = [at] if isinstance(at, str) else list(at)
    if not at:
        raise ConfigError("give at least one split point (a top-level child name), or a number of sections")
    return at


def check_split_points(model: nn.Module, at: Sequence[str]) -> list[str]:
    """Validate user split points (first children, or operations, of sections 2..K); ConfigError if
    wrong. Returns them (a traced model's as node names)."""
    if not _chains_children(model):
        return GraphSplit(model).check_points(_as_points(at))
    names = child_names(model)
    at = _as_points(at)
    position = {name: i for i, name in enumerate(names)}
    for name in at:
        if name not in position:
            hint = did_you_mean(str(name), names)
            if isinstance(name, str) and "." in name and name.split(".")[0] in position:
                raise ConfigError(f"split point {name!r} is inside {name.split('.')[0]!r}; only top-level "
                                  f"children can start a section: {', '.join(names)}")
            raise ConfigError(f"unknown split point {name!r}{hint}; the model's top-level children are: "
                              f"{', '.join(names)}")
        if position[name] == 0:
            raise ConfigError(f"split point {name!r} is the model's first child: the first section would be "
                              "empty (a split point names the first child of a new section)")
    indices = [position[name] for name in at]
    if len(set(indices)) != len(indices):
        raise ConfigError(f"split points repeat a name: {', '.join(at)}")
    if indices != sorted(indices):
        raise ConfigError(f"split points must follow the model's order ({', '.join(names)}); got {', '.join(at)}")
    return at


def split(model: nn.Module, at: Sequence[str] | None = None, *, sections: int | None = None,
          balance: str = "params", sample_input: torch.Tensor | None = None) -> list[nn.Module]:
    """Cut ``model`` into sections: ``nn.Sequential`` sections over its top-level children, or for
    any other model ``torch.fx.GraphModule`` sections over its traced graph (module doc).

    Give either ``at`` (the names that start sections 2..K) or ``sections=K`` (automatic,
    balanced by ``balance``: ``"params"`` or ``"macs"``, the latter measured on ``sample_input``).
    The sections share the model's modules (no copy) and keep their names.
    """
    if (at is None) == (sections is None):
        raise ConfigError("give either split points (at=[child names]) or a number of sections, not both")
    if not _chains_children(model):
        graph = GraphSplit(model)
        points = graph.check_points(_as_points(at)) if at is not None else _graph_split_points(
            graph, sections, balance, sample_input)
        return graph.sections(points)
    points = check_split_points(model, at) if at is not None else auto_split_points(
        model, sections, balance, sample_input)
    children = _children(model)
    result: list[nn.Module] = []
    current: list[tuple[str, nn.Module]] = []
    for name, child in children:
        if name in points and current:
            result.append(nn.Sequential(OrderedDict(current)))
            current = []
        current.append((name, child))
    result.append(nn.Sequential(OrderedDict(current)))
    return result


def stitch(sections: Sequence[nn.Module]) -> nn.Module:
    """One module running the sections one after the other: an ``nn.Sequential`` holding every
    section's children in order under their own names, or for GraphModule sections one GraphModule
    (the traced model's operations on the sections' modules, under their full paths)."""
    if not sections:
        raise ConfigError("stitch needs at least one section")
    if any(isinstance(section, torch.fx.GraphModule) for section in sections):
        return stitch_graphs(sections)
    children: OrderedDict[str, nn.Module] = OrderedDict()
    for index, section in enumerate(sections):
        for name, child in _children(section):
            if name in children:
                raise ConfigError(f"cannot stitch: child name {name!r} appears in more than one section "
                                  f"(again in section {index + 1})")
            children[name] = child
    return nn.Sequential(children)


def copy_stitched(sections: Sequence[nn.Module]) -> nn.Module:
    """A deep copy of ``stitch(sections)`` (for GraphModules, in the model's registration order)."""
    return restore_order(copy.deepcopy(stitch(sections)))


def split_points(sections: Sequence[nn.Module]) -> list[str]:
    """The first child (operation) name of sections 2..K (what ``split(at=...)`` takes to cut the same way)."""
    return [child_names(section)[0] for section in sections[1:]]


def describe(sections: Sequence[nn.Module]) -> list[str]:
    """One label per section: its first and last child (operation) names, e.g. ``"conv1..pool1"``."""
    labels = []
    for section in sections:
        names = child_names(section)
        labels.append(names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}")
    return labels
