"""Plan (METHODS.md section 6): JSON round trip, precedence, errors."""

from __future__ import annotations

import json
from fnmatch import fnmatchcase

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.errors import BitwidthError, PlanError
from lowbit.plan import PLAN_FORMAT, PLAN_VERSION, LayerBits, Plan, PlanEntry, describe
from lowbit.quant.bits import ALLOWED_BITS

NAMES = ["stem", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.down", "fc"]
MIDDLE = NAMES[1:-1]


def doc(**fields):
    return {"format": PLAN_FORMAT, "version": PLAN_VERSION, **fields}


def resolve(layers=None, default=(2, 4), first_last=(8, 8)):
    data = doc(default={"weight": default[0], "act": default[1]},
               first_last=None if first_last is None else {"weight": first_last[0], "act": first_last[1]},
               layers=layers or {})
    return {n: (b.weight, b.act) for n, b in Plan.from_dict(data).resolve(NAMES).items()}


# ---- hypothesis: round trip and resolution against a reference --------------------------------

BITS = st.sampled_from(ALLOWED_BITS)
OPT_BITS = st.one_of(st.none(), BITS)
LAYER_BITS = st.builds(LayerBits, BITS, BITS)
PATTERNS = st.text(alphabet="ab.01*?[]_-", min_size=1, max_size=10)
ENTRY_FIELDS = st.tuples(OPT_BITS, OPT_BITS).filter(lambda wa: wa != (None, None))


def plans(patterns=PATTERNS):
    entries = st.lists(st.tuples(patterns, ENTRY_FIELDS), unique_by=lambda e: e[0], max_size=6).map(
        lambda es: tuple(PlanEntry(p, w, a) for p, (w, a) in es))
    return st.builds(Plan, LAYER_BITS, st.one_of(st.none(), LAYER_BITS), entries)


@given(plan=plans())
def test_plan_json_round_trip(plan, tmp_path_factory):
    data = plan.to_dict()
    assert data["format"] == PLAN_FORMAT and data["version"] == PLAN_VERSION
    assert Plan.from_dict(data) == plan
    assert Plan.from_dict(json.loads(json.dumps(data))) == plan
    path = tmp_path_factory.getbasetemp() / "plans" / "plan.json"
    plan.save(path)
    assert Plan.load(path) == plan
    assert json.loads(path.read_text()) == data


def reference_resolve(plan: Plan, names: list[str]) -> dict[str, tuple[int, int]]:
    """The precedence table, written out rule by rule."""
    out = {}
    last = len(names) - 1
    for i, name in enumerate(names):
        bits = []
        for field in ("weight", "act"):
            exact = [getattr(e, field) for e in plan.entries
                     if not any(c in "*?[" for c in e.pattern) and e.pattern == name and getattr(e, field) is not None]
            globs = [getattr(e, field) for e in plan.entries
                     if any(c in "*?[" for c in e.pattern) and fnmatchcase(name, e.pattern)
                     and getattr(e, field) is not None]
            if exact:
                bits.append(exact[0])
            elif plan.first_last is not None and i == 0 and field == "act":
                bits.append(32)
            elif plan.first_last is not None and i in (0, last):
                bits.append(getattr(plan.first_last, field))
            elif globs:
                bits.append(globs[-1])
            else:
                bits.append(getattr(plan.default, field))
        out[name] = tuple(bits)
    return out


MATCHING = st.sampled_from(NAMES + ["layer1.*", "layer*.0.*", "*conv1", "*", "layer2.?.down", "*.conv[12]",
                                    "layer?.*", "s*", "*c"])


@given(plan=plans(MATCHING))
def test_resolution_follows_the_precedence_table(plan):
    got = {n: (b.weight, b.act) for n, b in plan.resolve(NAMES).items()}
    assert list(got) == NAMES
    assert got == reference_resolve(plan, NAMES)


# ---- precedence, case by case -----------------------------------------------------------------

def test_default_and_first_last_pin():
    got = resolve()
    assert got["stem"] == (8, 32)  # the network input stays float
    assert got["fc"] == (8, 8)
    assert all(got[n] == (2, 4) for n in MIDDLE)


def test_uniform():
    plan = Plan.uniform(3, 5)
    got = plan.resolve(NAMES)
    assert got["stem"] == LayerBits(8, 32) and got["fc"] == LayerBits(8, 8) and got["layer2.0.down"] == LayerBits(3, 5)
    no_pin = Plan.uniform(3, 5, keep_first_last=False).resolve(NAMES)
    assert set(no_pin.values()) == {LayerBits(3, 5)}
    assert Plan.uniform(2, first_last_bits=6).resolve(NAMES)["fc"] == LayerBits(6, 6)
    assert Plan().resolve(NAMES)["layer1.0.conv1"].is_float
    with pytest.raises(BitwidthError, match="default"):
        Plan.uniform(9)


def test_exact_beats_pin_field_by_field():
    got = resolve({"stem": {"weight": 3}, "fc": {"act": 2}})
    assert got["stem"] == (3, 32)  # act falls through to the pin's "input stays float"
    assert got["fc"] == (8, 2)
    assert resolve({"stem": {"act": 4}})["stem"] == (8, 4)


def test_pin_beats_globs():
    got = resolve({"*": {"weight": 2, "act": 3}})
    assert got["stem"] == (8, 32) and got["fc"] == (8, 8)
    assert all(got[n] == (2, 3) for n in MIDDLE)


def test_last_matching_glob_wins_field_by_field():
    got = resolve({"layer1.*": {"weight": 3, "act": 5}, "layer*.0.*": {"weight": 5}})
    assert got["layer1.0.conv1"] == (5, 5)  # weight from the last glob, act from the first
    assert got["layer1.1.conv1"] == (3, 5)
    assert got["layer2.0.conv1"] == (5, 4)  # act: default
    got = resolve({"layer*.0.*": {"weight": 5}, "layer1.*": {"weight": 3, "act": 5}})
    assert got["layer1.0.conv1"] == (3, 5)


@pytest.mark.parametrize("order", ["exact-first", "glob-first"])
def test_exact_beats_glob_and_leaves_unset_fields_to_the_next_rule(order):
    entries = [("layer1.0.conv1", {"weight": 4}), ("layer1.*", {"weight": 7, "act": 6})]
    if order == "glob-first":
        entries.reverse()
    got = resolve(dict(entries))
    assert got["layer1.0.conv1"] == (4, 6)
    assert got["layer1.0.conv2"] == (7, 6)


def test_glob_details():
    got = resolve({"*conv1": 3})  # '*' crosses dots; a bare int means weight bits
    assert [n for n in MIDDLE if got[n][0] == 3] == ["layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1"]
    assert resolve({"layer?.0.conv[2]": {"act": 1}})["layer1.0.conv2"] == (2, 1)
    with pytest.raises(PlanError, match="Layer1"):  # case-sensitive
        resolve({"Layer1.*": 3})


def test_no_pin():
    got = resolve({"layer1.*": 3}, first_last=None)
    assert got["stem"] == (2, 4) and got["fc"] == (2, 4) and got["layer1.1.conv1"] == (3, 4)


def test_single_layer_model_is_first_and_last():
    assert Plan.uniform(2, 2).resolve(["only"]) == {"only": LayerBits(8, 32)}
    assert Plan.uniform(2, 2).resolve([]) == {}


def test_from_layer_bits():
    plan = Plan.from_layer_bits({"stem": LayerBits(4, 32), "layer1.0.conv1": (3, 4), "fc": 2})
    assert plan.first_last is None
    got = plan.resolve(NAMES)
    assert got["stem"] == LayerBits(4, 32) and got["layer1.0.conv1"] == LayerBits(3, 4)
    assert got["fc"] == LayerBits(2, 32) and got["layer2.0.down"] == LayerBits(32, 32)
    assert Plan.from_dict(plan.to_dict()) == plan
    assert Plan.uniform(2).with_entries(PlanEntry("fc", 4)).resolve(NAMES)["fc"] == LayerBits(4, 8)


def test_describe():
    lines = list(describe(Plan.uniform(2, 4).resolve(["a", "b", "c"])))
    assert lines == ["a: w8 a32", "b: w2 a4", "c: w8 a8"]


# ---- entries that match nothing -------------------------------------------------------------

def test_unmatched_entry_is_an_error_with_a_hint():
    with pytest.raises(PlanError, match=r"'layer1\.0\.cnv1' matches no layer \(did you mean 'layer1\.0\.conv1'\?\)"):
        resolve({"layer1.0.cnv1": 3})
    with pytest.raises(PlanError, match=r"entries 'layer9\.\*', 'head' match no layer.*layers are: stem, "):
        resolve({"layer1.*": 3, "layer9.*": 2, "head": 4})


# ---- malformed plans ------------------------------------------------------------------------

MALFORMED = [
    ([], "must be a JSON object, got list"),
    ({"version": 1}, "not a lowbit plan: 'format' must be 'lowbit-plan', got None"),
    ({"format": "lowbit-plam", "version": 1}, "'format' must be 'lowbit-plan'"),
    ({"format": PLAN_FORMAT}, "unsupported plan version None"),
    ({"format": PLAN_FORMAT, "version": 2}, "unsupported plan version 2; this lowbit reads version 1"),
    (doc(defaults={"weight": 2}), r"unknown plan key 'defaults' \(did you mean 'default'\?\)"),
    (doc(default={"weight": 2, "bits": 4}), "'default' must be an object with 'weight' and/or 'act'"),
    (doc(default=4), "'default' must be an object"),
    (doc(first_last=[8, 8]), "'first_last' must be an object"),
    (doc(layers=[["fc", 4]]), "'layers' must be an object"),
    (doc(layers={"fc": "4"}), "plan entry 'fc' must be bits or an object"),
    (doc(layers={"fc": {}}), "plan entry 'fc' must be bits or an object"),
    (doc(layers={"fc": {"weight": 4, "wieght": 3}}), "plan entry 'fc'"),
    (doc(layers={"fc": True}), "plan entry 'fc'"),
    (doc(layers={"": 4}), "non-empty"),
    (doc(layers={"fc": 9}), r"invalid bitwidth 9 for layer 'fc'.*1\.\.8 or 32"),
    (doc(layers={"fc": {"act": 0}}), r"invalid bitwidth 0 for layer 'fc \(act\)'"),
    (doc(layers={"fc": {"weight": 2.5}}), "invalid bitwidth 2.5 for layer 'fc \\(weight\\)'"),
    (doc(default={"weight": 16}), r"invalid bitwidth 16 for layer 'default \(weight\)'"),
    (doc(first_last={"weight": 8, "act": -1}), r"invalid bitwidth -1 for layer 'first_last \(act\)'"),
]


@pytest.mark.parametrize("data,message", MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_malformed_plan_dicts(data, message, tmp_path):
    with pytest.raises(PlanError, match=message):
        Plan.from_dict(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=message) as info:
        Plan.load(path)
    assert str(path) in str(info.value)


def test_bad_bits_from_a_dict_are_also_bitwidth_errors():
    with pytest.raises(BitwidthError):
        Plan.from_dict(doc(layers={"fc": 9}))


@pytest.mark.parametrize("content,message", [
    (b"{not json", "cannot read plan"),
    (b"", "cannot read plan"),
    (b'{"format": "lowbit-plan", "version": 1,', "cannot read plan"),
    (b"\xff\xfe\x00{", "cannot read plan"),
])
def test_unreadable_plan_files(content, message, tmp_path):
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    with pytest.raises(PlanError, match=message):
        Plan.load(path)


def test_missing_plan_file(tmp_path):
    with pytest.raises(PlanError, match="plan file not found: .*nope.json"):
        Plan.load(tmp_path / "nope.json")
    with pytest.raises(PlanError, match="cannot read plan"):
        Plan.load(tmp_path)  # a folder


def test_minimal_plan_is_the_default_plan():
    assert Plan.from_dict(doc()) == Plan()
    assert Plan.from_dict(doc(first_last=None)).first_last is None
    assert Plan.from_dict(doc(layers={"fc": 4})).entries == (PlanEntry("fc", 4, None),)


def test_programmatic_plans_are_validated():
    with pytest.raises(BitwidthError, match="default"):
        Plan(LayerBits(9, 32))
    with pytest.raises(BitwidthError, match="'fc \\(act\\)'"):
        Plan(entries=(PlanEntry("fc", 4, 0),))
    with pytest.raises(PlanError, match="'fc' sets neither"):
        Plan(entries=(PlanEntry("fc"),))
    with pytest.raises(PlanError, match="non-empty"):
        Plan(entries=(PlanEntry("", 4),))


def test_save_is_atomic_json(tmp_path):
    path = tmp_path / "sub" / "plan.json"
    Plan.uniform(3, 4).save(path)
    assert json.loads(path.read_text()) == doc(default={"weight": 3, "act": 4}, first_last={"weight": 8, "act": 8},
                                                layers={})
    assert [p.name for p in path.parent.iterdir()] == ["plan.json"]
