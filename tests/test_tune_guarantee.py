"""The guarantee's arithmetic, and its coverage on synthetic data where the truth is known."""

from __future__ import annotations

import math
import random

import pytest

from batchroute.tune.choose import choose
from batchroute.tune.guarantee import (
    Hypothesis,
    binomial_tail,
    clopper_pearson_lower,
    clopper_pearson_upper,
    learn_then_test,
)
from batchroute.tune.policies import Gate, cascade_families, evaluate_cascade, single_families
from batchroute.tune.sample import Answers
from batchroute.tune.signals import Signal


def test_binomial_tail_matches_the_sum_of_its_terms() -> None:
    for n, p in ((10, 0.5), (37, 0.93), (200, 0.05)):
        for k in range(n + 1):
            exact = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
            assert binomial_tail(k, n, p) == pytest.approx(exact, rel=1e-9, abs=1e-300)
    assert binomial_tail(0, 5, 0.3) == 1.0 and binomial_tail(6, 5, 0.3) == 0.0


def test_clopper_pearson_bounds() -> None:
    # By definition: the bound is where the tail beyond what was seen has probability alpha.
    low = clopper_pearson_lower(95, 100, alpha=0.05)
    assert low == pytest.approx(0.89775, abs=1e-5)  # R: binom.test(95, 100, alt="greater")
    assert binomial_tail(95, 100, low) == pytest.approx(0.05, rel=1e-9)
    high = clopper_pearson_upper(5, 100, alpha=0.05)
    assert 1 - binomial_tail(6, 100, high) == pytest.approx(0.05, rel=1e-9)
    assert high == pytest.approx(1 - low, abs=1e-9)  # the symmetry of the binomial
    assert clopper_pearson_lower(50, 50, alpha=0.05) == pytest.approx(0.05 ** (1 / 50))
    assert clopper_pearson_lower(0, 50, alpha=0.05) == 0.0
    assert clopper_pearson_upper(50, 50, alpha=0.05) == 1.0


def test_fixed_sequence_stops_at_the_first_failure() -> None:
    family = [Hypothesis("a", 100, 100), Hypothesis("b", 80, 100), Hypothesis("c", 100, 100)]
    accepted = learn_then_test([family], target=0.9, delta=0.05)
    assert set(accepted) == {"a"}  # "c" would pass alone, but the sequence stopped at "b"
    two = learn_then_test(
        [[Hypothesis("a", 60, 60)], [Hypothesis("b", 60, 60)]], target=0.95, delta=0.1
    )
    assert set(two) == {"a", "b"} and two["a"] == pytest.approx(0.05)


def _population(rows: int, *, seed: int) -> dict[str, Answers]:
    """A cheap model right on easy rows, a strong one on most; the cheap model's stated
    confidence falls with difficulty, noisily, so thresholds near the target abound."""
    rng = random.Random(seed)
    cheap: dict[str, list] = {"answer": [], "correct": []}
    strong: list[bool] = []
    for _ in range(rows):
        hard = rng.random()
        strong.append(hard < 0.9 or rng.random() < 0.2)
        confidence = min(1.0, max(0.0, 1.0 - hard + rng.gauss(0, 0.2)))
        cheap["correct"].append(hard < 0.6 or rng.random() < 0.1)
        cheap["answer"].append(f'{{"confidence": {confidence:.4f}}}')

    def answers(model: str, correct: list[bool], answer: list[str | None], cost: float) -> Answers:
        return Answers(
            model, answer, [True] * rows, [cost] * rows, correct, [None] * rows, unpriced=0
        )

    return {
        "cheap": answers("cheap", cheap["correct"], cheap["answer"], 1.0),
        "strong": answers("strong", strong, [None] * rows, 20.0),
    }


def _subset(table: dict[str, Answers], rows: list[int]) -> dict[str, Answers]:
    def pick(a: Answers) -> Answers:
        return Answers(
            a.model,
            [a.answer[i] for i in rows],
            [a.ok[i] for i in rows],
            [a.cost[i] for i in rows],
            [a.correct[i] for i in rows],
            [a.mean_logprob[i] for i in rows],
            unpriced=0,
        )

    return {m: pick(a) for m, a in table.items()}


def _true_kept(
    population: dict[str, Answers],
    gate: Gate | None,
    tiers: tuple[str, ...],
    *,
    values: dict[str, list[float | None]],
) -> float:
    key = (gate, tiers)
    if key in _KEPT:
        return _KEPT[key]
    strong = population["strong"].correct
    if gate is None:
        correct = population[tiers[0]].correct
    else:
        assert gate.threshold is not None
        passes = {m: [v is not None and v >= gate.threshold for v in values[m]] for m in tiers}
        _, correct, _ = evaluate_cascade(tiers, table=population, passes=passes)
    right = [i for i, good in enumerate(strong) if good]
    _KEPT[key] = sum(1 for i in right if correct[i]) / len(right)
    return _KEPT[key]


_KEPT: dict[tuple[Gate | None, tuple[str, ...]], float] = {}  # of the one population below


TRIALS, SAMPLE, TARGET, CONFIDENCE = 300, 400, 0.9, 0.9


def test_the_chosen_policy_holds_the_target_with_the_stated_confidence() -> None:
    """Over many samples of one population, the chosen policy's true kept share (on the whole
    population) is at least the target in at least CONFIDENCE of the trials.

    With 300 trials, if the true coverage were exactly 0.9 the count of misses would have a
    standard deviation of sqrt(300 * 0.9 * 0.1) = 5.2; the slack of 3 standard deviations
    (16 trials) keeps a correct bound from failing by chance (p < 0.002). A naive choice
    (the point estimate at the target, no bound) misses far more often: the test has teeth.
    """
    population = _population(10_000, seed=7)
    rng = random.Random(11)
    missed = naive_missed = 0
    signal = [Signal("confidence")]
    values = {m: signal[0].read(a) for m, a in population.items()}
    for _ in range(TRIALS):
        sample = _subset(population, rng.sample(range(10_000), SAMPLE))
        families = single_families(sample) + cascade_families(sample, verdicts=None, signals=signal)
        top = families[1][0]
        assert top.key == "strong"
        choice = choose(families, top=top, target=TARGET, confidence=CONFIDENCE)
        assert choice.chosen is not None
        policy = choice.chosen.policy
        missed += _true_kept(population, policy.gate, policy.tiers, values=values) < TARGET
        naive = next(s for s in choice.scored if s.kept_share >= TARGET)
        naive_missed += (
            _true_kept(population, naive.policy.gate, naive.policy.tiers, values=values) < TARGET
        )
    slack = 3 * math.sqrt(TRIALS * CONFIDENCE * (1 - CONFIDENCE))
    assert missed <= TRIALS * (1 - CONFIDENCE) + slack
    assert naive_missed > TRIALS * (1 - CONFIDENCE) + slack
