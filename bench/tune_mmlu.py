"""Does `batchroute tune`'s guarantee hold on real data? MMLU (RouteLLM's recorded outcomes of
Mixtral-8x7B and GPT-4 on 14,042 questions), 20 seeds of a 1,000-row sample, target 95% kept.

Per seed: the candidate policies (each model alone, subject rules, the learned router) are
tuned on the sample exactly as `batchroute tune` does, from the recorded outcomes (the
replay serves those same outcomes and costs over HTTP); the chosen policy is then applied to
the 13,042 rows outside the sample, where its realised kept accuracy (its accuracy over
GPT-4's) and its cost against GPT-4 alone are measured, next to random routing at the same
accuracy and subject routing chosen in hindsight on those rows.

Seed 0 also goes through the real path: `batchroute tune` on the replayed job, then
`batchroute run` of the tuned job over the whole table, and the bench checks that the run's
accuracy and cost on the held-out rows are the figures computed offline.

    .venv/bin/python bench/tune_mmlu.py [--seeds 20] [--no-cli] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batchroute.job import load_job  # noqa: E402
from batchroute.learned import RouterModel  # noqa: E402
from batchroute.tune.choose import choose  # noqa: E402
from batchroute.tune.policies import Policy, single_families  # noqa: E402
from batchroute.tune.router_model import router_families  # noqa: E402
from batchroute.tune.rules_learn import rule_families, split_sample  # noqa: E402
from batchroute.tune.sample import Answers, draw_sample  # noqa: E402

TABLE = ROOT / "data" / "routing" / "routellm_mmlu.parquet"
CHEAP, TOP = "mixtral-8x7b-instruct-v0.1", "gpt-4-1106-preview"
SAMPLE, TARGET, CONFIDENCE = 1000, 0.95, 0.95
JOB = f"""
[input]
path = "{TABLE}"
id = "item_id"
prompt = "{{prompt}}"
[output]
path = "out/mmlu.parquet"
[endpoint]
base_url = "embedded"
[simulator]
replay = "{TABLE}"
[models."{CHEAP}"]
usd_per_mtok = {{ input = 0.6, output = 0.6 }}
[models."{TOP}"]
usd_per_mtok = {{ input = 10.0, output = 30.0 }}
[route]
strategy = "cascade"
tiers = ["{CHEAP}", "{TOP}"]
"""


def _answers(frame: pl.DataFrame, model: str) -> Answers:
    n = frame.height
    return Answers(
        model=model,
        answer=[None] * n,
        ok=[True] * n,
        cost=frame[f"{model}__cost_usd"].to_list(),
        correct=frame[f"{model}__correct"].to_list(),
        mean_logprob=[None] * n,
        unpriced=0,
    )


def _picks_cheap(policy: Policy, rows: list[dict[str, Any]]) -> list[bool]:
    """Where the chosen policy sends each row: True for the cheaper model."""
    if policy.kind == "learned":
        model = policy.detail["model"]
        assert isinstance(model, RouterModel)
        return [model.picks_cheap(r) for r in rows]
    if policy.kind == "rules":
        text = str(policy.detail["toml"])
        when = tomllib.loads(text)["route"]["rules"][0]["when"]
        values = {v.strip().strip("'") for v in when.split("IN (", 1)[1].rstrip(")").split(",")}
        return [r["subject"] in values for r in rows]
    return [policy.tiers[0] == CHEAP] * len(rows)


@dataclass
class Outcome:
    seed: int
    policy: str
    kept: float  # realised on held-out rows: accuracy over GPT-4's
    cost: float  # held-out cost over GPT-4 alone's
    random_cost: float  # random routing at the same accuracy, over GPT-4 alone's
    hindsight_cost: float  # subject routing chosen on the held-out rows, at 95% kept


def _hindsight(rows: list[dict[str, Any]]) -> float:
    """The cheapest subject routing that keeps 95% on these rows, chosen knowing the labels."""
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_subject.setdefault(r["subject"], []).append(r)
    top_right = sum(r[f"{TOP}__correct"] for r in rows)
    top_cost = sum(r[f"{TOP}__cost_usd"] for r in rows)

    def net(members: list[dict[str, Any]]) -> tuple[float, float]:
        lost = sum(r[f"{TOP}__correct"] - r[f"{CHEAP}__correct"] for r in members)
        saved = sum(r[f"{TOP}__cost_usd"] - r[f"{CHEAP}__cost_usd"] for r in members)
        return lost, saved

    order = sorted(by_subject, key=lambda s: net(by_subject[s])[0] / net(by_subject[s])[1])
    right, cost = float(top_right), top_cost
    for subject in order:
        lost, saved = net(by_subject[subject])
        if (right - lost) / top_right < TARGET:
            continue  # a later subject may still fit
        right, cost = right - lost, cost - saved
    return cost / top_cost


def run_seed(seed: int, *, job_path: Path, table: pl.DataFrame, size: int = SAMPLE) -> Outcome:
    job = load_job(job_path)
    sample = draw_sample(job, size=size, seed=seed, stratify=None)
    answers = {m: _answers(sample.frame, m) for m in (CHEAP, TOP)}
    singles = single_families(answers)
    top = singles[1][0]
    split = split_sample(sample.frame.height, seed=seed)
    families = [*singles]
    families += router_families(
        sample.frame.to_dicts(),
        answers,
        job=job,
        categorical=("subject",),
        top=TOP,
        split=split,
        seed=seed,
    )
    families += rule_families(
        sample.frame,
        answers,
        columns=("subject",),
        top=TOP,
        split=split,
        source=TABLE,
        net=True,
    )
    choice = choose(
        families, top=top, target=TARGET, confidence=CONFIDENCE, seed=seed, with_bounds=False
    )
    assert choice.chosen is not None
    policy = choice.chosen.policy
    sampled = set(sample.frame["item_id"].to_list())
    held = [r for r in table.iter_rows(named=True) if r["item_id"] not in sampled]
    cheap = _picks_cheap(policy, held)
    model = [CHEAP if c else TOP for c in cheap]
    right = sum(r[f"{m}__correct"] for r, m in zip(held, model, strict=True))
    cost = sum(r[f"{m}__cost_usd"] for r, m in zip(held, model, strict=True))
    top_right = sum(r[f"{TOP}__correct"] for r in held)
    cheap_right = sum(r[f"{CHEAP}__correct"] for r in held)
    top_cost = sum(r[f"{TOP}__cost_usd"] for r in held)
    cheap_cost = sum(r[f"{CHEAP}__cost_usd"] for r in held)
    share = min(1.0, max(0.0, (right - cheap_right) / (top_right - cheap_right)))
    random_cost = share * top_cost + (1 - share) * cheap_cost
    return Outcome(
        seed,
        policy.key,
        right / top_right,
        cost / top_cost,
        random_cost / top_cost,
        _hindsight(held),
    )


def cli_check(directory: Path, outcome: Outcome, *, job_path: Path) -> str:
    """Seed 0 through the real commands; the held-out figures must be the offline ones."""
    python = [sys.executable, "-m", "batchroute"]
    tuned = directory / "mmlu.tuned.toml"
    scorer = "batchroute.sim.replay:recorded_correct"
    subprocess.run(
        [*python, "tune", str(job_path), "--truth-scorer", scorer, "--sample", str(SAMPLE),
         "--target-kept", str(TARGET), "--rules-on", "subject", "--seed", "0", "-o", str(tuned)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    subprocess.run([*python, "run", "-q", str(tuned)], check=True, capture_output=True)
    results = pl.read_parquet(directory / "out" / "mmlu.parquet")
    calls = pl.read_parquet(directory / "out" / "mmlu.calls.parquet")
    stored = int(calls["cached"].sum())  # the sample, and rows repeating a sampled prompt
    sample = draw_sample(load_job(job_path), size=SAMPLE, seed=0, stratify=None)
    sampled = set(sample.frame["item_id"].to_list())
    held = results.filter(~pl.col("row_id").is_in(list(sampled)))
    right = sum(
        r[f"{r['model']}__correct"] for r in held.select("model", f"{CHEAP}__correct",
        f"{TOP}__correct").iter_rows(named=True)
    )  # fmt: skip
    kept = right / held[f"{TOP}__correct"].sum()
    cost = held["cost_usd"].sum() / held[f"{TOP}__cost_usd"].sum()
    # MMLU repeats 105 prompts (210 rows), 78 of them recorded at different costs (another
    # subject's few-shot prefix); the replay answers a prompt with its first recording, and
    # the store serves a repeated prompt's first call. Hence a small difference in cost.
    same = abs(kept - outcome.kept) < 0.002 and abs(cost - outcome.cost) < 0.005
    return (
        f"seed 0 through `batchroute tune` and `batchroute run` (replayed, {results.height} rows,"
        f" {stored} from the store): kept {kept:.2%}, cost {cost:.1%} of GPT-4 on the"
        f" held-out rows; {'matching' if same else 'DIFFERENT from'} the offline figures"
        f" ({outcome.kept:.2%}, {outcome.cost:.1%}: MMLU repeats 105 prompts, 78 recorded at"
        " different costs, and a repeated prompt is answered with its first recording)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--sample", type=int, default=SAMPLE, help="rows in the tune sample")
    parser.add_argument("--no-cli", action="store_true", help="skip the seed-0 CLI check")
    parser.add_argument("--write", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    table = pl.read_parquet(TABLE)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        job_path = Path(tmp) / "mmlu.toml"
        job_path.write_text(JOB)
        outcomes = [
            run_seed(s, job_path=job_path, table=table, size=args.sample) for s in range(args.seeds)
        ]
        for o in outcomes:
            print(
                f"seed {o.seed:2}: kept {o.kept:.2%} cost {o.cost:.1%} random {o.random_cost:.1%}"
                f" hindsight {o.hindsight_cost:.1%}  {o.policy}"
            )
        if args.sample != SAMPLE and not args.no_cli:
            parser.error("the CLI check runs the 1,000-row sample: add --no-cli")
        check = None if args.no_cli else cli_check(Path(tmp), outcomes[0], job_path=job_path)
    met = sum(o.kept >= TARGET for o in outcomes)
    lines += [
        "",
        f"## tune on MMLU: the guarantee on held-out rows ({len(outcomes)} seeds)",
        "",
        f"`bench/tune_mmlu.py --seeds {args.seeds}`: a {args.sample:,}-row sample of RouteLLM's",
        f"MMLU table (14,042 questions, Mixtral-8x7B and GPT-4), `--target-kept {TARGET}`,",
        f"`--confidence {CONFIDENCE}`, `--rules-on subject`, the ratio statistic; the chosen",
        f"policy applied to the {table.height - args.sample:,} rows outside the sample.",
        "",
        "| | median | min | max |",
        "|---|---|---|---|",
    ]
    for name, values in (
        ("realised kept accuracy (vs GPT-4)", [o.kept for o in outcomes]),
        ("cost of the tuned route (share of GPT-4 alone)", [o.cost for o in outcomes]),
        ("random routing at the same accuracy", [o.random_cost for o in outcomes]),
        ("subject routing in hindsight at 95% kept", [o.hindsight_cost for o in outcomes]),
    ):
        lines.append(
            f"| {name} | {statistics.median(values):.1%} | {min(values):.1%} | {max(values):.1%} |"
        )
    chosen: dict[str, int] = {}
    for o in outcomes:
        kind = o.policy.split(":")[0]
        chosen[kind] = chosen.get(kind, 0) + 1
    lines += [
        "",
        f"Target met on the held-out rows in {met} of {len(outcomes)} seeds"
        f" (the guarantee asks for at least {CONFIDENCE:.0%}). Chosen: "
        + ", ".join(f"{k} {v}x" for k, v in sorted(chosen.items()))
        + ".",
    ]
    if check is not None:
        lines += ["", check + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with (ROOT / "bench" / "RESULTS.md").open("a", encoding="utf-8") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
