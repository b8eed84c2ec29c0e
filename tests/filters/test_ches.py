"""CHES and LN-CHES against a hand computation from a direct transformers forward pass of each
sequence alone, through left- and right-padded batches of mixed lengths; the decide step's counts."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from prefdata.engines import EngineConfig
from prefdata.engines.transformers_engine import TransformersEngine
from prefdata.filters.ches import ChesConfig, ChesFilterConfig, ChesFilterStage, ChesStage, ches_scores
from prefdata.pipeline.context import BuildContext, EnginePool
from prefdata.registry import STAGES
from prefdata.schemas.formats import tokenize_pair

from ..conftest import FIXTURES


def _chat(text, role="user"):
    return [{"role": role, "content": text}]


def _pairs() -> pa.Table:
    """Pairs from the fixture, plus a two-turn prompt and very unequal response lengths."""
    rows = []
    for line in (FIXTURES / "pairs_small.jsonl").read_text().splitlines()[:5]:
        record = json.loads(line)
        rows.append({"id": record["id"], "prompt": _chat(record["prompt"]), "chosen": _chat(record["chosen"], "assistant"),
                     "rejected": _chat(record["rejected"], "assistant")})
    rows.append({"id": "multi-turn", "prompt": [*_chat("Hi"), *_chat("Hello! How can I help?", "assistant"),
                                                *_chat("Tell me a fact about the Moon.")],
                 "chosen": _chat("The Moon is about 384,000 km from Earth and always shows us the same face.", "assistant"),
                 "rejected": _chat("No.", "assistant")})
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def direct_model(hf_engine):
    """A separate AutoModelForCausalLM on the embedded model folder (float32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_engine.model_path, dtype=torch.float32)
    return model.eval()


def _final_states(model, ids: list[int]) -> torch.Tensor:
    """Hidden states after the final norm, captured from the norm module itself, float64 [len, hidden]."""
    captured = {}
    handle = model.model.norm.register_forward_hook(lambda _m, _i, out: captured.setdefault("h", out))
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    handle.remove()
    torch.testing.assert_close(out.hidden_states[-1], captured["h"])  # hidden_states[-1] is post-norm
    return captured["h"][0].double()


def _hand_ches(model, formatter, table: pa.Table) -> tuple[list[float], list[float]]:
    ches, ln_ches = [], []
    for row in table.to_pylist():
        prompt, chosen, rejected = tokenize_pair(formatter, row["prompt"], row["chosen"], row["rejected"])
        sums = []
        for response in (chosen, rejected):
            states = _final_states(model, prompt + response)
            # last prompt token .. second-to-last response token
            sums.append(states[len(prompt) - 1 : len(prompt) + len(response) - 1].sum(0))
        hp, hn = sums
        cross, own = float(hp @ hn), float(hp @ hp)
        ches.append(cross - own)
        ln_ches.append(cross / (len(chosen) * len(rejected)) - own / len(chosen) ** 2)
    return ches, ln_ches


def _run(stage, table, engine=None):
    pool = EnginePool({})
    if engine is not None:
        pool.put("policy", engine)
    ctx = BuildContext(engines=pool)
    stage.setup(ctx)
    out, stats = stage.run(table, ctx)
    return out, stats


@pytest.fixture(scope="module")
def hand(direct_model, chat_formatter):
    table = _pairs()
    return table, _hand_ches(direct_model, chat_formatter, table)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("batch_size", [3, 16])
def test_ches_equals_hand_computation(hf_engine, hand, padding_side, batch_size):
    """Same numbers for either padding side and any batch composition (3: several batches mixing
    chosen and rejected sides of different pairs; 16: all 12 sequences in one batch)."""
    table, (ches, ln_ches) = hand
    engine = TransformersEngine(EngineConfig(backend="transformers", dtype="float32", forward_batch_size=batch_size,
                                             padding_side=padding_side), model=hf_engine.model, tokenizer=hf_engine.tokenizer)
    out, stats = _run(ChesStage(ChesConfig()), table, engine)
    got = out.table
    assert got.column_names == [*table.column_names, "ches", "ln_ches"]
    assert got.column("id").to_pylist() == table.column("id").to_pylist()
    np.testing.assert_allclose(got.column("ches").to_pylist(), ches, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(got.column("ln_ches").to_pylist(), ln_ches, rtol=1e-4, atol=1e-4)
    assert stats.counters["ches_scored"] == table.num_rows
    # the scores separate pairs: not a constant or a sign-flipped formula
    assert len(set(np.round(ln_ches, 3))) == table.num_rows


def test_ches_bf16_engine_matches_float32(hf_engine, hand):
    """bf16 states summed in float32 keep the ranking the paper filters by."""
    table, (_, ln_ches) = hand
    model = type(hf_engine.model).from_pretrained(hf_engine.model_path, dtype=torch.bfloat16).eval()
    engine = TransformersEngine(EngineConfig(backend="transformers", dtype="bfloat16", forward_batch_size=4),
                                model=model, tokenizer=hf_engine.tokenizer)
    got = np.array(_run(ChesStage(), table, engine)[0].table.column("ln_ches").to_pylist())
    assert np.argsort(got).tolist() == np.argsort(ln_ches).tolist()
    np.testing.assert_allclose(got, ln_ches, rtol=0.05, atol=0.05 * np.abs(ln_ches).max())


def test_ches_vllm_matches_transformers(vllm_engine, hand):
    table, (ches, ln_ches) = hand
    got = _run(ChesStage(), table, vllm_engine)[0].table
    np.testing.assert_allclose(got.column("ln_ches").to_pylist(), ln_ches, rtol=1e-3, atol=1e-3 * np.abs(ln_ches).max())
    np.testing.assert_allclose(got.column("ches").to_pylist(), ches, rtol=1e-3, atol=1e-3 * np.abs(ches).max())


def test_ches_scores_closed_form():
    hp, hn = np.array([[1.0, 2.0], [3.0, 0.0]]), np.array([[2.0, 0.0], [3.0, 4.0]])
    ches, ln = ches_scores(hp, hn, np.array([2, 3]), np.array([4, 1]))
    # <H+,H-> - ||H+||^2: (2 - 5), (9 - 9); LN: 2/8 - 5/4, 9/3 - 9/9
    np.testing.assert_allclose(ches, [-3.0, 0.0])
    np.testing.assert_allclose(ln, [2 / 8 - 5 / 4, 3.0 - 1.0])


def test_identical_responses_have_zero_ches(hf_engine, chat_formatter):
    """chosen == rejected gives H+ == H-, so CHES = 0 exactly: the top of the risk scale's reference."""
    table = pa.Table.from_pylist([{"id": "same", "prompt": _chat("Say hi."), "chosen": _chat("Hi!", "assistant"),
                                   "rejected": _chat("Hi!", "assistant")}])
    got = _run(ChesStage(), table, hf_engine)[0].table
    assert got.column("ches")[0].as_py() == pytest.approx(0.0, abs=1e-2)
    assert got.column("ln_ches")[0].as_py() == pytest.approx(0.0, abs=1e-4)


def test_too_long_and_empty_get_null_scores(hf_engine):
    table = pa.Table.from_pylist([
        {"id": "long", "prompt": _chat("word " * 3000), "chosen": _chat("a", "assistant"), "rejected": _chat("b", "assistant")},
        {"id": "ok", "prompt": _chat("Say hi."), "chosen": _chat("Hi!", "assistant"), "rejected": _chat("Go away.", "assistant")},
    ])
    out, stats = _run(ChesStage(), table, hf_engine)
    assert out.table.column("ches").to_pylist()[0] is None
    assert out.table.column("ln_ches").to_pylist()[0] is None
    assert out.table.column("ches").to_pylist()[1] is not None
    assert stats.counters["ches_null_too_long"] == 1 and stats.counters["ches_scored"] == 1


def test_empty_table(hf_engine):
    table = _pairs().slice(0, 0)
    out, _ = _run(ChesStage(), table, hf_engine)
    assert out.table.num_rows == 0 and "ln_ches" in out.table.column_names


# --- decide --------------------------------------------------------------------------------------

def _scored(values, ches=None):
    n = len(values)
    return pa.table({"id": [f"r{i}" for i in range(n)], "prompt": [_chat("q")] * n,
                     "ches": pa.array(ches if ches is not None else values, pa.float64()),
                     "ln_ches": pa.array(values, pa.float64())})


def _decide(table, **config):
    return _run(ChesFilterStage(ChesFilterConfig(**config)), table)


def test_drop_top_share_counts_and_rejects():
    table = _scored([0.5, 3.0, -1.0, 2.0, None, 1.0, 2.0, 0.0, 4.0, -2.0, 1.5])  # 10 scored, 1 null
    out, stats = _decide(table, share=0.2)
    assert out.table.column("id").to_pylist() == ["r0", "r2", "r3", "r4", "r5", "r6", "r7", "r9", "r10"]
    assert stats.drops == {"ches_high": 2}
    assert stats.counters["ches_null_kept"] == 1
    assert sorted(r.row_id for r in out.rejects) == ["r1", "r8"]
    assert all(r.field == "ln_ches" and "highest 2 of 10" in r.detail for r in out.rejects)
    assert json.loads(out.rejects[0].payload)["id"] in {"r1", "r8"}


def test_ties_break_by_id():
    out, _ = _decide(_scored([1.0, 2.0, 2.0, 2.0]), share=0.5)  # drop 2 of the three 2.0s: r1, r2
    assert out.table.column("id").to_pylist() == ["r0", "r3"]


def test_keep_lowest_is_the_papers_rule_and_nulls_can_be_dropped():
    values = [float(v) for v in range(20)] + [None]
    out, stats = _decide(_scored(values), rule="keep_lowest", share=0.05, nulls="drop")
    assert out.table.column("id").to_pylist() == ["r0"]
    assert stats.drops == {"ches_high": 19, "ches_null": 1}


def test_drop_above_threshold_on_ches():
    out, stats = _decide(_scored([0.0, 0.0, 0.0], ches=[-5.0, 1.0, 7.0]), score="ches", rule="drop_above", threshold=0.5)
    assert out.table.column("id").to_pylist() == ["r0"]
    assert stats.drops == {"ches_high": 2}
    assert {r.detail for r in out.rejects} == {"ches=1 above the threshold 0.5", "ches=7 above the threshold 0.5"}


def test_config_validation_and_registry():
    assert (ChesFilterConfig().rule, ChesFilterConfig().share) == ("drop_top_share", 0.05)
    with pytest.raises(ValueError, match="needs `threshold`"):
        ChesFilterConfig(rule="drop_above")
    with pytest.raises(ValueError):
        ChesFilterConfig(share=0.1, bogus=1)
    assert STAGES["ches"] == (ChesConfig, ChesStage) and STAGES["ches_filter"] == (ChesFilterConfig, ChesFilterStage)


def test_share_rules_are_whole_input_unless_per_shard():
    assert ChesFilterStage(ChesFilterConfig(share=0.1)).whole_input
    assert not ChesFilterStage(ChesFilterConfig(share=0.1, per_shard=True)).whole_input
    assert not ChesFilterStage(ChesFilterConfig(rule="drop_above", threshold=1.0)).whole_input  # per row


@pytest.mark.realdata
def test_build_scores_then_decides(hf_engine, shared_data, tmp_path):
    """A recipe that scores and decides on real HH-RLHF pairs: columns, drops and stats."""
    from prefdata.builder import run_build

    recipe = {"name": "ches", "source": {"path": str(shared_data / "hh_rlhf_harmless_test_1312.jsonl"), "kind": "hh", "limit": 10},
              "stages": [{"type": "ches"}, {"type": "ches_filter", "share": 0.3}], "output": {"dir": str(tmp_path / "out")}}
    result = run_build(recipe, engines={"policy": hf_engine})
    import prefdata

    data = prefdata.load(result.out_dir)
    assert len(data) == 7 and {"ches", "ln_ches"} <= set(data.column_names)
    stages = {s["name"]: s for s in result.stats["stages"]}
    assert stages["ches_filter"]["drops"] == {"ches_high": 3}
    kept = max(data["ln_ches"])
    rejects = pa.parquet.read_table(result.out_dir / "rejects.parquet").to_pylist()
    dropped = [json.loads(r["payload"])["ln_ches"] for r in rejects if r["reason"] == "ches_high"]
    assert min(dropped) >= kept
