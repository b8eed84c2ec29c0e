"""Label-noise flip rate: the share epsilon of pairs whose preference label is flipped, with an interval.

The robust DPO losses need epsilon: cDPO (1-eps) ell(h) + eps ell(-h) and rDPO
[(1-eps) ell(h) - eps ell(-h)] / (1-2eps) (Chowdhury et al. 2024, *Provably Robust DPO*, arXiv
2403.00409), whose paper assumes epsilon is known. prefdata estimates it from the ensemble's
member margins d_im (`member_margins`; strength mu_i = mean_m d_im, sigma_i the population std,
as in the voting filter, Wang et al. 2024, arXiv 2401.06080):

* `sign` (strength-sign share, tightened by the std): hi = share(mu_i < 0), an upper bound that
  also counts pairs the ensemble merely gets wrong; lo = share(mu_i < -z sigma_i), pairs the
  members agree are reversed; epsilon = (lo + hi) / 2.
* `mixture`: a two-component Gaussian mixture on mu with mirrored means,
  mu ~ (1 - eps) N(m, s^2) + eps N(-m, s^2), fitted by EM (a flipped pair's margins are its clean
  margins negated, so the flipped component mirrors the clean one). Interval: percentile
  bootstrap over pairs. The per-pair posterior of the mirrored component is the `flip_prob` column.
* `calibrated` (when the judge's accuracy a was measured on labelled pairs it was not fitted on:
  the `embedding_rm` stage's out-of-fold accuracy on its `train_path`, or a gold file): the judge
  (the vote of those members, sign of their mean margin) disagrees with the dataset's label on a
  share d = (1 - a)(1 - eps) + a eps of pairs, so eps = (d - (1 - a)) / (2a - 1) (needs a > 1/2):
  unbiased, but wide when a is near 1/2. Interval: percentile bootstrap over the dataset's pairs
  (d) and, independently, over the pairs that measured a. `calibrated_estimate` is a pure function
  of (agree, held_out_correct); the stage only finds its inputs. With a gold file its number is
  `moments`'s.
* `moments` (when a gold subset with known labels is given): the ensemble's vote sign(mu) is a
  judge; its accuracy a on the gold pairs and its agreement A with the dataset's labels give
  A = a(1 - eps) + (1 - a) eps, so eps = (a - A) / (2a - 1) (needs a > 1/2). Interval: bootstrap
  over gold and dataset pairs together.

stats.json gets `estimates.flip_rate = {"epsilon", "interval", "method", "n", "estimators"}`:
the primary estimate (`method`; default `calibrated` when a held-out accuracy is available, else
`mixture`) in the trainer's contract (`prefdata.train.config.FlipRate`), every estimator's result
under `estimators` (an estimator that could not run says why under `error`).

**Where the accuracy comes from.** An `embedding_rm` stage fitted on `train_path` scores every
pair of that file out of fold and publishes, with its fit (`WholeInputStage.publish`), which pairs
its vote got right and which positions of `member_margins` are its members. The executors hand it
to this stage's fit (`ctx.info["judge_calibration"]`) wherever the fit runs (local, Ray's driver,
`prefdata.api`) and also when the embedding-RM fit comes from a checkpoint on resume. Without
`train_path` the heads are fitted on the labels being judged, so their out-of-fold accuracy is
agreement with those labels, not accuracy: no calibration.

**Decisions.**
- Estimates are clipped to [0, 0.499] (the rDPO loss needs eps < 1/2) and the interval is widened
  to contain the point estimate.
- Pairs with no member margin are left out of every estimator and get a null `flip_prob`; a table
  with no scored pair contributes no estimate (never an epsilon of 0 from nothing).
- One estimate over the whole input, whatever the shards: the stage is map -> fit -> apply
  (`WholeInputStage`). `fit` runs the estimators once on the (id, member margins[, gold key])
  view of all shards and keeps the mirrored mixture's parameters; `apply` writes each row's
  `flip_prob`, the posterior of the mirrored component under those parameters, so a row gets the
  same value in any shard. (A table run by hand through `process` is its own whole input.)
- Gold labels come from a file (`gold_path`, JSONL or Parquet) of rows `{key, correct}`: `key`
  names the pair's `prompt_id` (the source row id for input pairs) or `id`; `correct` is true
  when the dataset's chosen really is the better response. Joined on the key, never on text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata.filters.voting import MEMBER_MARGINS, STRENGTH_MEAN, STRENGTH_STD, strength
from prefdata.pipeline.context import CALIBRATION_KEY, BuildContext
from prefdata.pipeline.stage import StageOutput, WholeInputStage
from prefdata.schemas.errors import InputError
from prefdata.schemas.pair import put_column

CITATION = """@inproceedings{chowdhury2024provably,
  title={Provably Robust DPO: Aligning Language Models with Noisy Feedback},
  author={Chowdhury, Sayak Ray and Kini, Anush and Natarajan, Nagarajan},
  booktitle={Proceedings of the 41st International Conference on Machine Learning},
  year={2024},
  note={arXiv:2403.00409}
}"""
FLIP_PROB = "flip_prob"
MAX_EPSILON = 0.499
Estimator = Literal["sign", "mixture", "moments", "calibrated"]


class NoiseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["noise"] = "noise"
    column: str = Field(MEMBER_MARGINS, description="List column of per-member margins d_m")
    method: Literal["auto", "sign", "mixture", "moments", "calibrated"] = Field(
        "auto", description="Primary estimate written as estimates.flip_rate (auto: calibrated when a held-out accuracy "
                            "is available, else mixture)")
    z: float = Field(1.0, ge=0, description="sign: a pair counts as confidently flipped when mu < -z * sigma")
    bootstrap: int = Field(200, ge=10, le=10000, description="Bootstrap resamples for the intervals")
    level: float = Field(0.95, gt=0, lt=1, description="Interval coverage")
    gold_path: Path | None = Field(None, description="Gold labels: JSONL/Parquet rows {key, correct} (enables `moments`)")
    gold_key: Literal["prompt_id", "id"] = Field("prompt_id", description="Pair column the gold file's `key` matches")
    seed: int = Field(0, description="Seed of the bootstrap")


def _bounded(eps: float, lo: float, hi: float) -> dict[str, Any]:
    eps = float(np.clip(eps, 0.0, MAX_EPSILON))
    lo, hi = float(np.clip(lo, 0.0, MAX_EPSILON)), float(np.clip(hi, 0.0, MAX_EPSILON))
    return {"epsilon": round(eps, 6), "interval": [round(min(lo, eps), 6), round(max(hi, eps), 6)]}


def sign_estimate(mu: np.ndarray, sigma: np.ndarray, z: float = 1.0) -> dict[str, Any]:
    hi = float(np.mean(mu < 0)) if len(mu) else 0.0
    lo = float(np.mean(mu < -z * sigma)) if len(mu) else 0.0
    return {**_bounded((lo + hi) / 2, lo, hi), "method": "sign"}


def fit_mirrored_mixture(mu: np.ndarray, iterations: int = 200, tol: float = 1e-8) -> tuple[float, float, float, np.ndarray]:
    """EM for (1 - eps) N(m, s^2) + eps N(-m, s^2); returns eps, m, s and the posteriors of N(-m, s^2)."""
    mu = np.asarray(mu, dtype=float)
    if len(mu) == 0:
        return 0.0, 0.0, 1.0, np.zeros(0)
    m = float(np.mean(np.abs(mu))) or 1e-6
    s = float(np.std(mu)) or 1e-6
    eps = 0.25
    for _ in range(iterations):
        # log-densities of the two components (the shared normaliser cancels)
        clean = -((mu - m) ** 2) / (2 * s * s)
        flipped = -((mu + m) ** 2) / (2 * s * s)
        logit = np.log(max(eps, 1e-12)) - np.log(max(1 - eps, 1e-12)) + flipped - clean
        r = 1.0 / (1.0 + np.exp(-np.clip(logit, -500, 500)))
        new_eps = float(np.mean(r))
        m = float(np.mean((1 - 2 * r) * mu))
        s = float(np.sqrt(np.mean((1 - r) * (mu - m) ** 2 + r * (mu + m) ** 2))) or 1e-6
        done = abs(new_eps - eps) < tol
        eps = new_eps
        if done:
            break
    if m < 0:  # the "clean" component is the lower one: relabel so eps is the mirrored share
        m, eps, r = -m, 1 - eps, 1 - r
    return eps, m, s, r


def mirrored_posterior(mu: np.ndarray, eps: float, m: float, s: float) -> np.ndarray:
    """P(flipped component | mu) under (1 - eps) N(m, s^2) + eps N(-m, s^2): the E-step of
    `fit_mirrored_mixture` at its fitted parameters, for rows scored after the fit."""
    mu = np.asarray(mu, dtype=float)
    logit = (np.log(max(eps, 1e-12)) - np.log(max(1 - eps, 1e-12))
             + (-((mu + m) ** 2) + (mu - m) ** 2) / (2 * s * s))
    return 1.0 / (1.0 + np.exp(-np.clip(logit, -500, 500)))


def _percentiles(values: list[float], level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def mixture_estimate(mu: np.ndarray, bootstrap: int = 200, level: float = 0.95, seed: int = 0) -> tuple[dict[str, Any], np.ndarray]:
    eps, m, s, posterior = fit_mirrored_mixture(mu)
    rng = np.random.default_rng(seed)
    draws = [fit_mirrored_mixture(mu[rng.integers(0, len(mu), len(mu))])[0] for _ in range(bootstrap)] if len(mu) else [0.0]
    lo, hi = _percentiles(draws, level)
    return {**_bounded(eps, lo, hi), "method": "mixture", "component_mean": round(m, 6), "component_std": round(s, 6)}, posterior


def moments_point(vote_gold: np.ndarray, correct: np.ndarray, vote_all: np.ndarray) -> tuple[float | None, float, float]:
    """eps = (a - A) / (2a - 1): a = judge accuracy on gold, A = judge agreement with the dataset labels."""
    a = float(np.mean(vote_gold == correct))
    agreement = float(np.mean(vote_all))
    return ((a - agreement) / (2 * a - 1) if a > 0.5 else None), a, agreement


def moments_estimate(mu: np.ndarray, gold_mu: np.ndarray, correct: np.ndarray, bootstrap: int = 200,
                     level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    vote_all, vote_gold = mu > 0, gold_mu > 0
    eps, a, agreement = moments_point(vote_gold, correct, vote_all)
    info = {"method": "moments", "gold_pairs": int(len(gold_mu)), "judge_accuracy": round(a, 6),
            "agreement": round(agreement, 6)}
    if eps is None:
        return {**info, "epsilon": None, "interval": None,
                "error": f"the ensemble's accuracy on the gold pairs is {a:.3f}; moments needs it above 0.5"}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        g = rng.integers(0, len(gold_mu), len(gold_mu))
        d = rng.integers(0, len(mu), len(mu))
        value = moments_point(vote_gold[g], correct[g], vote_all[d])[0]
        if value is not None:
            draws.append(value)
    lo, hi = _percentiles(draws, level) if draws else (eps, eps)
    return {**info, **_bounded(eps, lo, hi)}


def calibrated_point(agree: np.ndarray, held_out_correct: np.ndarray) -> tuple[float | None, float, float]:
    """eps = (d - (1 - a)) / (2a - 1): d = share of pairs where the judge disagrees with the label,
    a = the judge's accuracy on held-out labelled pairs. None when a <= 1/2."""
    a = float(np.mean(held_out_correct))
    d = 1.0 - float(np.mean(agree))
    return ((d - (1 - a)) / (2 * a - 1) if a > 0.5 else None), a, d


def calibrated_estimate(agree: np.ndarray, held_out_correct: np.ndarray, bootstrap: int = 200, level: float = 0.95,
                        seed: int = 0, source: str = "given") -> dict[str, Any]:
    """The `calibrated` flip rate with a percentile-bootstrap interval over both samples.

    agree [n]: the judge agrees with the dataset's label on each pair; held_out_correct [m]: the judge
    was right on each held-out pair (never fitted on). Pure: arrays in, a dict out."""
    agree, held_out_correct = np.asarray(agree, bool), np.asarray(held_out_correct, bool)
    info: dict[str, Any] = {"method": "calibrated", "accuracy_source": source, "held_out_pairs": int(len(held_out_correct)),
                            "pairs": int(len(agree))}
    if not len(agree) or not len(held_out_correct):
        return {**info, "epsilon": None, "interval": None, "error": "no pairs to estimate from"}
    eps, a, d = calibrated_point(agree, held_out_correct)
    info.update({"judge_accuracy": round(a, 6), "disagreement": round(d, 6)})
    if eps is None:
        return {**info, "epsilon": None, "interval": None,
                "error": f"the judge's held-out accuracy is {a:.3f}; calibrated needs it above 0.5"}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        value = calibrated_point(agree[rng.integers(0, len(agree), len(agree))],
                                 held_out_correct[rng.integers(0, len(held_out_correct), len(held_out_correct))])[0]
        if value is not None:
            draws.append(value)
    lo, hi = _percentiles(draws, level) if draws else (eps, eps)
    return {**info, "raw_epsilon": round(eps, 6), **_bounded(eps, lo, hi)}


def read_gold(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise InputError(str(path), "gold label file not found")
    frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path)
    for name in ("key", "correct"):
        if name not in frame.columns:
            raise InputError(str(path), f"gold rows need 'key' and 'correct'; columns are {frame.columns}", field=name)
    if frame.schema["correct"] != pl.Boolean:
        raise InputError(str(path), f"'correct' must be true/false, got {frame.schema['correct']}", field="correct")
    return frame.select(pl.col("key").cast(pl.String), "correct").unique("key", keep="first")


def _calibration_votes(table: pa.Table, config: NoiseConfig, calibration: dict[str, Any]) -> np.ndarray:
    """Per row: 1 (the calibrated judge agrees with the label), 0 (disagrees) or NaN (no margin), the judge
    being the members at `calibration["members"]` = [start, stop) of the margin lists (else the last M)."""
    start, stop = calibration.get("members") or (None, None)
    count = calibration.get("member_count")
    votes = np.full(table.num_rows, np.nan)
    for i, row in enumerate(table.column(config.column).to_pylist()):
        values = (row or [])[start:stop] if start is not None else (row or [])[-count:] if count else []
        finite = [v for v in values if v is not None and np.isfinite(v)]
        if finite:
            votes[i] = float(np.mean(finite) > 0)
    return votes


def estimate_flip_rate(table: pa.Table, config: NoiseConfig, gold: pl.DataFrame | None = None,
                       calibration: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[float | None]]:
    """The dataset-level estimates and the per-row flip probability (null where strength is null).

    `calibration`: {"correct": [bool] on held-out pairs, "members": [start, stop) or "member_count": M,
    "source": str} from the scorer stage that measured its accuracy (see the module docstring)."""
    scores = strength(table, config.column)
    keys = table.column(config.gold_key).to_pylist() if gold is not None else None
    scored = np.flatnonzero(scores[STRENGTH_MEAN].is_not_null().to_numpy())
    mu = scores[STRENGTH_MEAN].to_numpy()[scored].astype(float)
    sigma = scores[STRENGTH_STD].to_numpy()[scored].astype(float)
    estimators: dict[str, Any] = {"sign": sign_estimate(mu, sigma, config.z)}
    estimators["mixture"], posterior = mixture_estimate(mu, config.bootstrap, config.level, config.seed)
    if gold is not None:
        labels = dict(zip(gold["key"].to_list(), gold["correct"].to_list()))
        in_gold = [i for i, row in enumerate(scored) if keys[row] in labels]
        estimators["moments"] = moments_estimate(
            mu, mu[in_gold], np.array([labels[keys[scored[i]]] for i in in_gold], dtype=bool), config.bootstrap,
            config.level, config.seed)
    if calibration is not None:
        votes = _calibration_votes(table, config, calibration)
        voted = ~np.isnan(votes)
        estimators["calibrated"] = calibrated_estimate(votes[voted].astype(bool), np.asarray(calibration["correct"], bool),
                                                       config.bootstrap, config.level, config.seed,
                                                       calibration.get("source", "scorer"))
    elif gold is not None:  # the gold pairs measure the ensemble vote's accuracy: moments' number
        estimators["calibrated"] = {**estimators["moments"], "method": "calibrated", "accuracy_source": "gold file"}
    else:
        estimators["calibrated"] = {"epsilon": None, "interval": None, "method": "calibrated",
                                    "error": "no held-out accuracy: fit embedding_rm on train_path or give gold_path"}
    available = estimators["calibrated"].get("epsilon") is not None
    method = config.method if config.method != "auto" else "calibrated" if available else "mixture"
    if method == "moments" and "moments" not in estimators:
        raise ValueError(f"method {method!r} needs a gold file (gold_path)")
    primary = estimators[method]
    if primary.get("epsilon") is None:  # moments/calibrated could not be computed: fall back, and say so
        primary = {**estimators["mixture"], "method": f"mixture ({method} failed: {primary['error']})"}
    flip_prob: list[float | None] = [None] * table.num_rows
    for row, p in zip(scored, posterior):
        flip_prob[int(row)] = float(p)
    estimate = {"epsilon": primary["epsilon"], "interval": primary["interval"], "method": primary["method"],
                "n": int(len(mu)), "estimators": estimators}
    return estimate, flip_prob


class NoiseFilter(WholeInputStage):
    """Label-noise flip rate (Chowdhury et al. 2024): epsilon with an interval, and per-pair `flip_prob`."""

    name: ClassVar[str] = "noise"
    citation: ClassVar[str | None] = CITATION
    reads: ClassVar[tuple[str, ...]] = ("id", MEMBER_MARGINS)
    adds: ClassVar[tuple[str, ...]] = (FLIP_PROB,)
    config: NoiseConfig

    def __init__(self, config: NoiseConfig | None = None):
        super().__init__(config or NoiseConfig())
        self.reads = ("id", self.config.column) + ((self.config.gold_key,) if self.config.gold_path else ())
        self.fit_columns = tuple(dict.fromkeys(self.reads))
        self.gold: pl.DataFrame | None = None

    def setup(self, ctx: BuildContext) -> None:
        if self.config.gold_path is not None:
            self.gold = read_gold(self.config.gold_path)

    def fit(self, view: pa.Table, ctx: BuildContext) -> dict[str, Any]:
        """Every estimator once over the whole input, and the mixture's parameters for `apply`."""
        if self.config.gold_path is not None and self.gold is None:
            self.gold = read_gold(self.config.gold_path)
        # an accuracy measured on held-out data by an earlier scorer stage (embedding_rm on train_path)
        calibration = ctx.info.get(CALIBRATION_KEY) if ctx is not None else None
        estimate, _ = estimate_flip_rate(view, self.config, self.gold, calibration)
        if not estimate["n"]:  # no scored pair: no estimate (an epsilon of 0 from nothing would mislead)
            return {"flip_rate": None, "mixture": None}
        mu = strength(view, self.config.column)[STRENGTH_MEAN].drop_nulls().to_numpy().astype(float)
        eps, m, s, _ = fit_mirrored_mixture(mu)
        return {"flip_rate": estimate, "mixture": {"epsilon": eps, "mean": m, "std": s}}

    def fit_estimates(self, fitted: dict[str, Any]) -> dict[str, Any]:
        return {"flip_rate": fitted["flip_rate"]} if fitted["flip_rate"] else {}

    def describe(self, fitted: dict[str, Any]) -> dict[str, Any]:
        return {"mixture": fitted["mixture"]}  # the estimate itself is under stats.json `estimates`

    def apply(self, table: pa.Table, fitted: dict[str, Any], ctx: BuildContext) -> StageOutput:
        mu = strength(table, self.config.column)[STRENGTH_MEAN].to_numpy().astype(float)  # NaN where unscored
        scored = ~np.isnan(mu)
        flip_prob = np.full(len(mu), np.nan)
        if fitted["mixture"] is not None and scored.any():
            p = fitted["mixture"]
            flip_prob[scored] = mirrored_posterior(mu[scored], p["epsilon"], p["mean"], p["std"])
        column = pa.array(flip_prob, type=pa.float64(), mask=np.isnan(flip_prob))
        counters = {"noise_pairs_estimated": int(scored.sum()), "noise_pairs_unscored": int((~scored).sum())}
        return StageOutput(put_column(table, FLIP_PROB, column), [], counters)

    def combine_estimates(self, shards: list[dict[str, Any]]) -> dict[str, Any]:
        if len(shards) <= 1:
            return dict(shards[0]) if shards else {}
        parts = [s["flip_rate"] for s in shards if s.get("flip_rate") and s["flip_rate"]["n"]]
        total = sum(p["n"] for p in parts)
        if not total:
            return {}

        def weighted(get) -> float:
            return sum(get(p) * p["n"] for p in parts) / total

        combined = _bounded(weighted(lambda p: p["epsilon"]), weighted(lambda p: p["interval"][0]),
                            weighted(lambda p: p["interval"][1]))
        return {"flip_rate": {**combined, "method": f"{parts[0]['method']} (pair-weighted mean over {len(parts)} shards)",
                              "n": total, "shards": parts}}
