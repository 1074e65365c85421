"""Tune: find the cheapest route that keeps the quality asked for, with a stated confidence.

sample.py     a seeded (or stratified) sample, answered once by every candidate model
signals.py    the job's checks re-run on the stored answers; confidence signals
policies.py   candidate policies (models, cascades, threshold sweeps) evaluated offline
guarantee.py  exact binomial bounds and Learn-then-Test
choose.py     every policy scored against the top model; the cheapest that holds
writer.py     the tuned job file; format.py the tables; tuner.py the whole command
predict.py    the full run's predicted figures, written as the tuned job's [tune] table
frontier.py   the sample's cost-quality frontier as SVG; page.py the HTML report around it
"""

from __future__ import annotations

from batchroute.tune.tuner import TuneOptions, TuneResult, tune

__all__ = ["TuneOptions", "TuneResult", "tune"]
