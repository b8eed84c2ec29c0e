"""Generate on-policy pairs inside a training job, with the model the job already holds.

    python examples/apply_in_training_job.py            # loads the embedded SmolLM2 itself

In a real job, pass the job's engine (any prefdata Engine) to `main`; prefdata does not load or
close it. The rows go through the same stage contract as `prefdata build`, shard by shard.
"""

from __future__ import annotations

import os
import warnings

import datasets

import prefdata

DATA = os.environ.get("PREFDATA_DATA", "../shared/data")


def main(engine=None, limit: int = 3) -> datasets.Dataset:
    prompts = datasets.load_dataset("json", data_files=f"{DATA}/oasst_prompt_lottery_150.jsonl", split="train")
    prompts = prompts.select(range(limit))  # any view of a dataset works (select, shuffle, filter)
    own = engine is None
    if own:
        from prefdata.engines import EngineConfig, load_engine

        engine = load_engine(EngineConfig(backend="transformers", dtype="float32"))
    try:
        with warnings.catch_warnings(record=True) as caught:  # rows set aside are reported, never dropped silently
            warnings.simplefilter("always")
            pairs, rejects = prefdata.apply(
                prompts,
                {"type": "on_policy", "n": 2, "sampling": {"max_tokens": 16, "temperature": 1.0}},
                engines={"policy": engine}, seed=0, with_rejects=True)
    finally:
        if own:
            engine.close()
    for row in pairs:
        print(f"{row['prompt_id']}: margin {row['margin']:.3f}\n  + {row['chosen'][0]['content']!r}\n"
              f"  - {row['rejected'][0]['content']!r}")
    print(f"{len(pairs)} pairs, {len(rejects)} rejects {[str(w.message) for w in caught]}")
    return pairs


if __name__ == "__main__":
    main()
