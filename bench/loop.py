"""The closed loop: raw pairs -> curation -> DPO -> held-out metrics, for five arms on one budget.

    python bench/loop.py [--train 256] [--heldout 160] [--fit 200] [--steps 32] [--seeds 2] [--out out/bench_loop]

Data: HH-RLHF harmless pairs ($PREFDATA_TEST_DATA or ../shared/data), those whose prompt+response
fits `--max-length` tokens, shuffled once (seed 0) and split into a fixed train split, a fixed
held-out split and a separate pool on which the embedding reward model is fitted (never the train
or held-out pairs). Model: the embedded SmolLM2-135M-Instruct, fp32 on CPU; only the last
`--layers` decoder layers are trainable (the embeddings, the tied LM head and the lower layers are
frozen: a CPU budget, said in the README). Reference log-probs are precomputed once (the
`reference_logps` stage); every arm trains with prefdata's trainer, same steps, lr, beta, batch.

Arms (a shuffled seed per run changes the flipped set and the batch order):
  a_clean      the pairs as given, plain DPO (sigmoid)
  b_noisy      20% of train labels flipped at random, plain DPO
  c_robust     the noisy set, loss robust with epsilon auto: the noise stage's `calibrated` estimate,
               the judge being the embedding-RM ensemble fitted on the separate pool, its accuracy
               measured out of fold on that pool
  d_voting     the noisy set curated by the voting filter on the same ensemble's margins: lowest 20%
               by strength flipped (`incorrect`), next 20% dropped (`ambiguous`)
  e_ches       the clean set with the top 10% by LN-CHES dropped (CHES of the starting policy, the
               model being trained)
Held-out, before (the starting policy, shared) and after each arm: ranking accuracy (summed and
length-normalised log-probs), mean change of log pi(chosen) and of log pi(rejected) over the
held-out pairs (likelihood displacement), implicit reward margin and reward accuracy.
Writes results.json, table.md and loop.png under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import DATA  # noqa: E402, I001 - puts the repository on sys.path first

ARMS = ("a_clean", "b_noisy", "c_robust", "d_voting", "e_ches")
LABELS = {"a_clean": "(a) clean, DPO", "b_noisy": "(b) 20% flipped, DPO", "c_robust": "(c) flipped, robust eps=auto",
          "d_voting": "(d) flipped, voting-curated", "e_ches": "(e) clean, top 10% LN-CHES dropped"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare(args: argparse.Namespace, out: Path) -> dict:
    """The fixed splits with reference log-probs, the RM fit pool, CHES on train; cached in out/prep."""
    from prefdata import api
    from prefdata.engines import EngineConfig, load_engine
    from prefdata.schemas.readers import read_pairs
    from prefdata.train.data import EncodeSpec, encode_pairs
    from prefdata.types import SourceKind

    prep = out / "prep"
    names = ("train", "heldout", "fit")
    if all((prep / f"{n}.parquet").is_file() for n in names):
        return {n: pq.read_table(prep / f"{n}.parquet") for n in names}
    prep.mkdir(parents=True, exist_ok=True)
    table = read_pairs(DATA / "hh_rlhf_harmless_test_1312.jsonl", kind=SourceKind.HH).table
    engine = load_engine(EngineConfig(backend="transformers", dtype="float32", batch_size=8, max_model_len=2048))
    fits = encode_pairs(table.to_pylist(), engine.tokenizer, EncodeSpec(max_length=args.max_length))
    short = {e.id for e in fits.examples}
    ids = table.column("id").to_pylist()
    usable = [i for i, row_id in enumerate(ids) if row_id in short]
    order = np.random.default_rng(0).permutation(len(usable))
    rows = [usable[i] for i in order]
    splits = {"train": rows[: args.train], "heldout": rows[args.train : args.train + args.heldout]}
    rest = [i for i in range(table.num_rows) if i not in set(splits["train"]) | set(splits["heldout"])]
    splits["fit"] = [rest[i] for i in np.random.default_rng(1).permutation(len(rest))[: args.fit]]
    log(f"{len(usable)} of {table.num_rows} pairs fit {args.max_length} tokens; "
        f"train {len(splits['train'])}, held-out {len(splits['heldout'])}, RM fit pool {len(splits['fit'])}")
    result = {}
    for name in names:
        part = table.take(pa.array(sorted(splits[name]), type=pa.int64()))
        if name == "train":
            part = api.apply(part, {"type": "ches"}, engines={"policy": engine}).data.table
        pq.write_table(part, prep / f"{name}.parquet")
        result[name] = part
        log(f"prepared {name}: {part.num_rows} pairs")
    engine.close()
    return result


def flip_at_random(table: pa.Table, share: float, seed: int) -> tuple[pa.Table, np.ndarray]:
    from prefdata.filters.voting import flip_rows

    mask = np.zeros(table.num_rows, bool)
    mask[np.random.default_rng(1000 + seed).permutation(table.num_rows)[: round(share * table.num_rows)]] = True
    return flip_rows(table, pa.array(mask)), mask


def curate(noisy: pa.Table, fit: pa.Table, clean: pa.Table, folder: Path, seed: int, args: argparse.Namespace) -> dict:
    """Embedding RM fitted on the separate pool -> noise (stats.json for epsilon auto) and voting; CHES drop."""
    from prefdata import api
    from prefdata.filters.noise import NoiseConfig, NoiseFilter
    from prefdata.pipeline.context import BuildContext, EnginePool
    from prefdata.scorers.embedding_rm import EmbeddingRMConfig, EmbeddingRMStage

    folder.mkdir(parents=True, exist_ok=True)
    fit_path = folder / "rm_fit.parquet"
    pq.write_table(fit.drop_columns([c for c in fit.column_names if c.startswith(("ref_", "ches", "ln_ches"))]), fit_path)
    ctx = BuildContext(engines=EnginePool({}), seed=seed)
    rm = EmbeddingRMStage(EmbeddingRMConfig(train_path=fit_path, train_kind="pairs"))
    noise = NoiseFilter(NoiseConfig(bootstrap=500, seed=seed))
    rm.setup(ctx)
    noise.setup(ctx)
    scored = rm.process(noisy, ctx)
    estimated = noise.process(scored.table, ctx)
    stats = {"estimates": {**scored.estimates, **estimated.estimates}}
    (folder / "stats.json").write_text(json.dumps(stats, indent=2))
    voted = api.apply(estimated.table, {"type": "voting", "incorrect_quantile": 0.2, "ambiguous_quantile": 0.4,
                                        "decide": {"incorrect": "flip", "ambiguous": "drop"}})
    ches = api.apply(clean, {"type": "ches_filter", "score": "ln_ches", "rule": "drop_top_share", "share": 0.1})
    return {"noisy": estimated.table, "voted": voted.data.table, "ches": ches.data.table, "stats": stats}


class TrunkCache:
    """The frozen lower decoder layers run once per distinct sequence; their output is cached.

    Exact for the positions that count: with right padding and causal attention a valid position
    never attends to the pads after it, so a row's trunk output does not depend on its batch."""

    def __init__(self, decoder, trainable: int):
        import torch

        self.trunk = _view(decoder, decoder.layers[:-trainable], torch.nn.Identity())
        self.top = _view(decoder, decoder.layers[-trainable:], decoder.norm)
        self.rows: dict[bytes, object] = {}

    def hidden(self, input_ids, attention_mask):
        import torch

        lengths = attention_mask.sum(1).tolist()
        keys = [input_ids[i, :n].numpy().tobytes() for i, n in enumerate(lengths)]
        missing = [i for i, k in enumerate(keys) if k not in self.rows]
        if missing:
            with torch.no_grad():
                out = self.trunk(input_ids=input_ids[missing], attention_mask=attention_mask[missing],
                                 use_cache=False).last_hidden_state
            for j, i in enumerate(missing):
                self.rows[keys[i]] = out[j, : lengths[i]].clone()
        hidden = torch.zeros(*input_ids.shape, self.top.config.hidden_size)
        for i, k in enumerate(keys):
            hidden[i, : lengths[i]] = self.rows[k]
        return hidden


def _view(decoder, layers, norm):
    """A shallow copy of the decoder with other layers and norm (modules shared, not copied)."""
    import copy

    import torch

    view = copy.copy(decoder)
    view._modules = dict(decoder._modules)
    view.layers = torch.nn.ModuleList(list(layers))
    view.norm = norm
    return view


def cached_policy(lm, trainable: int):
    """SmolLM2 whose decoder is (cached frozen trunk) -> trainable top layers -> norm; the LM head (tied to
    the frozen embeddings) stays frozen. prefdata's trainer sees a causal LM with a `model` decoder and an
    output embedding, so it runs its chunked log-prob path on it unchanged."""
    import torch

    lm.requires_grad_(False)
    cache = TrunkCache(lm.model, trainable)
    for module in (*cache.top.layers, cache.top.norm):
        module.requires_grad_(True)

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.top = cache.top

        def forward(self, input_ids=None, attention_mask=None, use_cache=False, **_):
            return self.top(inputs_embeds=cache.hidden(input_ids, attention_mask), attention_mask=attention_mask,
                            use_cache=False)

    class TopLayersLM(torch.nn.Module):
        base_model_prefix = "model"

        def __init__(self):
            super().__init__()
            self.model = Decoder()
            self.lm_head = lm.lm_head
            self.config = lm.config

        def get_output_embeddings(self):
            return self.lm_head

    wrapper = TopLayersLM()
    initial = {k: v.clone() for k, v in wrapper.state_dict().items() if "top.layers" in k or "top.norm" in k}
    return wrapper, initial


def encode(table: pa.Table, tokenizer, args: argparse.Namespace, ref: bool):
    from prefdata.train.data import EncodeSpec, encode_pairs

    return encode_pairs(table.to_pylist(), tokenizer, EncodeSpec(max_length=args.max_length, ref_columns=ref)).examples


def scores_of(model, tokenizer, table: pa.Table, args: argparse.Namespace, ref: bool = True) -> dict:
    from prefdata.train.eval import score_examples
    from prefdata.train.logps import columns_reference

    return score_examples(model, encode(table, tokenizer, args, ref), tokenizer.pad_token_id,
                          columns_reference if ref else None, batch_size=8, precision="fp32")


def with_reference(model, tokenizer, table: pa.Table, args: argparse.Namespace) -> pa.Table:
    """The starting policy's summed response log-probs as ref_*_logps columns (what `reference_logps` adds)."""
    from prefdata.schemas.pair import put_column

    s = scores_of(model, tokenizer, table, args, ref=False)
    table = put_column(table, "ref_chosen_logps", pa.array(s["chosen_logps"], pa.float64()))
    return put_column(table, "ref_rejected_logps", pa.array(s["rejected_logps"], pa.float64()))


def heldout_scores(model, tokenizer, heldout: pa.Table, args: argparse.Namespace) -> dict:
    from prefdata.train.eval import ranking_metrics

    scores = scores_of(model, tokenizer, heldout, args)
    return {"scores": scores, "metrics": ranking_metrics(scores, beta=args.beta)}


def train_arm(name: str, table: pa.Table, folder: Path, seed: int, args: argparse.Namespace, epsilon, policy) -> dict:
    import datasets

    from prefdata.train import TrainConfig, train

    model, initial, tokenizer = policy
    model.load_state_dict(initial, strict=False)  # every arm starts from the same weights
    extra = {"loss": "robust", "epsilon": epsilon} if epsilon is not None else {}
    config = TrainConfig(dataset=folder, output_dir=folder / name, reference="columns", beta=args.beta, lr=args.lr,
                         batch_size=args.batch_size, max_steps=args.steps, warmup_ratio=0.1, max_length=args.max_length,
                         precision="fp32", device="cpu", seed=seed, save_final=False, **extra)
    started = time.perf_counter()
    result = train(config, model=model, tokenizer=tokenizer, dataset=datasets.Dataset(table), progress=False)
    seconds = time.perf_counter() - started
    after = heldout_scores(model, tokenizer, args.heldout_table, args)
    return {"after": after, "train_seconds": seconds, "train_pairs": table.num_rows,
            "final_loss": result.metrics[-1]["loss"], "epsilon": json.loads((folder / name / "config.json").read_text())
            .get("epsilon_value")}


def summarise(before: dict, after: dict) -> dict:
    b, a = before["scores"], after["scores"]
    m = after["metrics"]
    return {"ranking_accuracy": m["ranking_accuracy"], "ranking_accuracy_normalised": m["ranking_accuracy_normalised"],
            "delta_logp_chosen": float(np.mean(a["chosen_logps"] - b["chosen_logps"])),
            "delta_logp_rejected": float(np.mean(a["rejected_logps"] - b["rejected_logps"])),
            "reward_margin": m["reward_margin"], "reward_accuracy": m["reward_accuracy"]}


COLUMNS = (("ranking_accuracy", "RA summed"), ("ranking_accuracy_normalised", "RA length-norm."),
           ("delta_logp_chosen", "mean d log pi(chosen)"), ("delta_logp_rejected", "mean d log pi(rejected)"),
           ("reward_margin", "reward margin"), ("reward_accuracy", "reward accuracy"))


def table_markdown(before: dict, runs: dict) -> str:
    lines = ["| arm | train pairs | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    m = before["metrics"]
    lines.append(f"| before (starting policy) | - | {m['ranking_accuracy']:.3f} | {m['ranking_accuracy_normalised']:.3f} "
                 "| 0 | 0 | 0 | - |")
    for arm in ARMS:
        if arm not in runs:
            continue
        per_seed = runs[arm]
        cells = []
        for key, _ in COLUMNS:
            values = np.array([r["summary"][key] for r in per_seed], dtype=float)
            cells.append(f"{values.mean():.3f}" + (f" +- {values.std(ddof=1):.3f}" if len(values) > 1 else ""))
        pairs = "/".join(str(r["train_pairs"]) for r in per_seed)
        eps = per_seed[0].get("epsilon")
        label = LABELS[arm] + (f" (eps {eps:.3f})" if eps is not None else "")
        lines.append(f"| {label} | {pairs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(before: dict, runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in ARMS if a in runs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    x = np.arange(len(arms))

    def stats(key):
        values = [np.array([r["summary"][key] for r in runs[a]], dtype=float) for a in arms]
        return np.array([v.mean() for v in values]), np.array([v.std(ddof=1) if len(v) > 1 else 0 for v in values])

    for key, offset, label in (("ranking_accuracy", -0.2, "summed"), ("ranking_accuracy_normalised", 0.2, "length-normalised")):
        mean, err = stats(key)
        axes[0].bar(x + offset, mean, 0.4, yerr=err, label=label)
    axes[0].axhline(before["metrics"]["ranking_accuracy"], color="C0", ls="--", lw=1)
    axes[0].axhline(before["metrics"]["ranking_accuracy_normalised"], color="C1", ls="--", lw=1)
    axes[0].set_ylim(0.3, 0.8)
    axes[0].set_title("held-out ranking accuracy (dashed: before)")
    axes[0].legend(fontsize=8)
    for key, offset, label in (("delta_logp_chosen", -0.2, "chosen"), ("delta_logp_rejected", 0.2, "rejected")):
        mean, err = stats(key)
        axes[1].bar(x + offset, mean, 0.4, yerr=err, label=label)
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set_title("held-out mean change of log pi(y)")
    axes[1].legend(fontsize=8)
    mean, err = stats("reward_margin")
    axes[2].bar(x, mean, 0.6, yerr=err, color="C2")
    axes[2].axhline(0, color="k", lw=0.8)
    axes[2].set_title("held-out implicit reward margin")
    for ax in axes:
        ax.set_xticks(x, [a.split("_", 1)[0] + ") " + a.split("_", 1)[1] for a in arms], rotation=20, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=256, help="train pairs")
    parser.add_argument("--heldout", type=int, default=160, help="held-out pairs")
    parser.add_argument("--fit", type=int, default=200, help="separate pairs the embedding RM is fitted on")
    parser.add_argument("--max-length", type=int, default=160, help="longest prompt+response in tokens (shorter pairs only)")
    parser.add_argument("--layers", type=int, default=4, help="trainable top decoder layers")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--out", default="out/bench_loop")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = prepare(args, out)
    import torch

    from prefdata.train.logps import load_causal_lm, response_logps

    torch.manual_seed(0)
    lm, tokenizer, _ = load_causal_lm(None, torch.device("cpu"))
    model, initial = cached_policy(lm, args.layers)
    check = encode(data["heldout"].slice(0, 2), tokenizer, args, ref=False)
    from prefdata.train.data import collate

    batch = collate(check, tokenizer.pad_token_id)
    with torch.no_grad():
        gap = (response_logps(model, batch) - response_logps(lm, batch, chunk_size=0)).abs().max().item()
    assert gap < 1e-3, f"cached-trunk log-probs differ from the full model's by {gap}"
    for name in ("train", "heldout"):
        data[name] = with_reference(model, tokenizer, data[name], args)
    args.heldout_table = data["heldout"]
    before = heldout_scores(model, tokenizer, data["heldout"], args)
    log(f"trunk cache checked (max gap {gap:.2e}); before: {json.dumps(before['metrics'])}")
    runs: dict[str, list] = {}
    curation: dict[int, dict] = {}
    for seed in range(args.seeds):
        folder = out / f"seed{seed}"
        noisy, flipped = flip_at_random(data["train"], args.noise, seed)
        log(f"seed {seed}: curating ({flipped.sum()} of {len(flipped)} labels flipped)")
        cur = curate(noisy, data["fit"], data["train"], folder, seed, args)
        flip = cur["stats"]["estimates"]["flip_rate"]
        voted_ids = set(cur["voted"].column("id").to_pylist())
        was_flipped = dict(zip(noisy.column("id").to_pylist(), flipped))
        voted_flipped = np.array(cur["voted"].column("flipped").to_pylist())
        voted_injected = np.array([was_flipped[i] for i in cur["voted"].column("id").to_pylist()])
        curation[seed] = {
            "flip_rate": {k: flip[k] for k in ("epsilon", "interval", "method")},
            "estimators": {k: {kk: v.get(kk) for kk in ("epsilon", "interval", "judge_accuracy", "error")}
                           for k, v in flip["estimators"].items()},
            "rm_fit_out_of_fold_accuracy": cur["stats"]["estimates"]["embedding_rm"].get("train_out_of_fold_accuracy"),
            "voting_kept": len(voted_ids), "voting_flipped": int(voted_flipped.sum()),
            "voting_wrong_labels_left": int((voted_injected ^ voted_flipped).sum()),
            "injected_wrong_labels": int(flipped.sum()), "ches_kept": cur["ches"].num_rows}
        log(f"seed {seed}: curation {json.dumps(curation[seed])}")
        tables = {"a_clean": (data["train"], None), "b_noisy": (noisy, None), "c_robust": (noisy, "auto"),
                  "d_voting": (cur["voted"], None), "e_ches": (cur["ches"], None)}
        for arm in args.arms.split(","):
            table, epsilon = tables[arm]
            run = train_arm(arm, table, folder, seed, args, epsilon, (model, initial, tokenizer))
            run["summary"] = summarise(before, run["after"])
            runs.setdefault(arm, []).append({k: v for k, v in run.items() if k != "after"})
            log(f"seed {seed} {arm}: {run['train_seconds']:.0f} s, {json.dumps(run['summary'])}")
            (out / "results.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "heldout_table"},
                                                         "before": before["metrics"], "curation": curation,
                                                         "runs": runs}, indent=2, default=float))
            markdown = table_markdown(before, runs)
            (out / "table.md").write_text(markdown + "\n")
            plot(before, runs, out / "loop.png")
    log(f"done in {time.perf_counter() - started:.0f} s\n{table_markdown(before, runs)}")


if __name__ == "__main__":
    main()
