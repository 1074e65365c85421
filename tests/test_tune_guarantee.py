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
    p_value,
)
from batchroute.tune.kept import Kept, KeptStatistic
from batchroute.tune.policies import Policy, cascade_families, evaluate_cascade, single_families
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


def _binomial(key: str, kept: int, n: int, *, target: float) -> Hypothesis:
    return Hypothesis(key, lambda _level: p_value(kept, n, target=target))


def test_fixed_sequence_stops_at_the_first_failure() -> None:
    family = [
        _binomial("a", 100, 100, target=0.9),
        _binomial("b", 80, 100, target=0.9),
        _binomial("c", 100, 100, target=0.9),
    ]
    accepted = learn_then_test([family], delta=0.05)
    assert set(accepted) == {"a"}  # "c" would pass alone, but the sequence stopped at "b"
    pair = [[_binomial("a", 60, 60, target=0.95)], [_binomial("b", 60, 60, target=0.95)]]
    two = learn_then_test(pair, delta=0.1)
    assert set(two) == {"a", "b"} and two["a"] == pytest.approx(0.05)


def test_the_ratio_bound_credits_the_policy_for_the_top_models_misses() -> None:
    # 100 rows: the top model right on 80; the policy right on 76 of those and on 10 others.
    top = [True] * 80 + [False] * 20
    policy = [True] * 76 + [False] * 4 + [True] * 10 + [False] * 10
    ratio, share = Kept("ratio", top=top, seed=0), Kept("share", top=top, seed=0)
    assert ratio.point(policy, None) == pytest.approx(86 / 80)
    assert share.point(policy, None) == pytest.approx(76 / 80)
    low, high = ratio.bounds(policy, None, alpha=0.05)
    assert 0.9 < low < 86 / 80 < high
    assert share.bounds(policy, None, alpha=0.05)[0] < low
    # A p-value under a target the policy plainly beats, and over one it plainly misses.
    assert ratio.p_value(policy, None, target=0.8, alpha=0.05) < 0.05
    assert ratio.p_value(policy, None, target=1.3, alpha=0.05) == 1.0


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


def _true(
    population: dict[str, Answers],
    policy: Policy,
    *,
    values: dict[str, list[float | None]],
    statistic: KeptStatistic,
) -> float:
    """The policy's kept accuracy on the whole population: the truth the sample estimates."""
    key = (policy.gate, policy.tiers, statistic)
    if key in _KEPT:
        return _KEPT[key]
    strong = population["strong"].correct
    gate = policy.gate
    if gate is None:
        correct = population[policy.tiers[0]].correct
    else:
        assert gate.threshold is not None
        passes = {
            m: [v is not None and v >= gate.threshold for v in values[m]] for m in policy.tiers
        }
        _, correct, _ = evaluate_cascade(policy.tiers, table=population, passes=passes)
    _KEPT[key] = Kept(statistic, top=strong, seed=0).point(correct, None)
    return _KEPT[key]


_KEPT: dict[tuple[object, ...], float] = {}  # of the one population below


TRIALS, SAMPLE, CONFIDENCE = 300, 400, 0.9


@pytest.mark.parametrize("statistic", ["share", "ratio"])
def test_the_chosen_policy_holds_the_target_with_the_stated_confidence(
    statistic: KeptStatistic,
) -> None:
    """Over many samples of one population, the chosen policy's true kept share (on the whole
    population) is at least the target in at least CONFIDENCE of the trials.

    With 300 trials, if the true coverage were exactly 0.9 the count of misses would have a
    standard deviation of sqrt(300 * 0.9 * 0.1) = 5.2; the slack of 3 standard deviations
    (16 trials) keeps a correct bound from failing by chance (p < 0.002).

    The target is put just above the true kept accuracy of one threshold of the grid, the
    hard case: that policy misses the target, yet its point estimate on a sample beats it
    about half the time. So a naive choice (the cheapest point estimate at the target, no
    bound) misses far more often than allowed: the test has teeth.
    """
    population = _population(10_000, seed=7)
    rng = random.Random(11)
    missed = naive_missed = 0
    signal = [Signal("confidence")]
    values = {m: signal[0].read(a) for m, a in population.items()}
    grid = cascade_families(population, verdicts=None, signals=signal)[0]
    truths = [_true(population, p, values=values, statistic=statistic) for p in grid]
    TARGET = min(truths, key=lambda kept: abs(kept - 0.9)) + 0.002
    for _ in range(TRIALS):
        sample = _subset(population, rng.sample(range(10_000), SAMPLE))
        families = single_families(sample) + cascade_families(sample, verdicts=None, signals=signal)
        top = families[1][0]
        assert top.key == "strong"
        choice = choose(
            families,
            top=top,
            target=TARGET,
            confidence=CONFIDENCE,
            statistic=statistic,
            with_bounds=False,
        )
        assert choice.chosen is not None
        policy = choice.chosen.policy
        missed += _true(population, policy, values=values, statistic=statistic) < TARGET
        naive = next(s for s in choice.scored if s.kept >= TARGET)
        naive_missed += _true(population, naive.policy, values=values, statistic=statistic) < TARGET
    slack = 3 * math.sqrt(TRIALS * CONFIDENCE * (1 - CONFIDENCE))
    assert missed <= TRIALS * (1 - CONFIDENCE) + slack
    assert naive_missed > TRIALS * (1 - CONFIDENCE) + slack
