#!/usr/bin/env python3
"""Reference figures for src/experiment/stats.rs, from gbstats and statsmodels.

Run by hand (not in CI) after changing the statistics or the inputs:

    python3 -m venv /tmp/stats-venv
    /tmp/stats-venv/bin/pip install gbstats==0.8.0 statsmodels scipy numpy
    /tmp/stats-venv/bin/python scripts/stats-fixtures.py > tests/fixtures/stats.json

The inputs (per user: converted answers, answers, pre-experiment watches)
are drawn once from a fixed seed and written into the fixture, so the Rust
tests read the very numbers the references saw.
"""
import json
import re
import sys

import numpy as np
from gbstats.frequentist.tests import (
    FrequentistConfig,
    OneSidedTreatmentLesserTTest,
    SequentialConfig,
    SequentialTwoSidedTTest,
    TwoSidedTTest,
)
from gbstats.models.statistics import (
    RatioStatistic,
    RegressionAdjustedStatistic,
    SampleMeanStatistic,
    compute_theta,
)
from gbstats.utils import check_srm
from scipy.stats import norm
from statsmodels.stats.power import NormalIndPower

ALPHA = 0.05


def users(rng, n, lift):
    out = []
    for _ in range(n):
        taste = rng.beta(2, 5)
        answers = 1 + rng.poisson(3)
        converted = rng.binomial(answers, min(1.0, taste * lift))
        pre = rng.poisson(2 + 20 * taste)
        out.append([int(converted), int(answers), int(pre)])
    return out


def ratio(us):
    m = [u[0] for u in us]
    d = [u[1] for u in us]
    n = len(us)
    return RatioStatistic(
        n=n,
        m_statistic=SampleMeanStatistic(n=n, sum=sum(m), sum_squares=sum(x * x for x in m)),
        d_statistic=SampleMeanStatistic(n=n, sum=sum(d), sum_squares=sum(x * x for x in d)),
        m_d_sum_of_products=sum(x * y for x, y in zip(m, d)),
    )


def cuped(us):
    post = [u[0] for u in us]
    pre = [u[2] for u in us]
    n = len(us)
    return RegressionAdjustedStatistic(
        n=n,
        post_statistic=SampleMeanStatistic(n=n, sum=sum(post), sum_squares=sum(x * x for x in post)),
        pre_statistic=SampleMeanStatistic(n=n, sum=sum(pre), sum_squares=sum(x * x for x in pre)),
        post_pre_sum_of_products=sum(x * y for x, y in zip(post, pre)),
        theta=0,
    )


def main():
    rng = np.random.default_rng(20261207)
    control = users(rng, 400, 1.0)
    treatment = users(rng, 380, 1.15)
    a, b = ratio(control), ratio(treatment)
    e = {}
    e["control_mean"] = a.mean
    e["control_variance"] = a.variance
    e["treatment_mean"] = b.mean
    e["treatment_variance"] = b.variance
    half = norm.ppf(1 - ALPHA / 2) * np.sqrt(a.variance / a.n)
    e["control_ci_lo"] = a.mean - half
    e["control_ci_hi"] = a.mean + half
    for key, kind in [("abs", "absolute"), ("rel", "relative")]:
        r = TwoSidedTTest(a, b, FrequentistConfig(alpha=ALPHA, difference_type=kind)).compute_result()
        e[f"{key}_point"] = r.expected
        e[f"{key}_ci_lo"], e[f"{key}_ci_hi"] = r.ci
        e[f"{key}_p_value"] = r.p_value
    s = SequentialTwoSidedTTest(
        a, b, SequentialConfig(alpha=ALPHA, difference_type="absolute", sequential_tuning_parameter=5000)
    ).compute_result()
    e["seq_ci_lo"], e["seq_ci_hi"] = s.ci
    e["seq_p_value"] = s.p_value
    ni = OneSidedTreatmentLesserTTest(
        a, b, FrequentistConfig(alpha=ALPHA, difference_type="absolute", test_value=0.02)
    ).compute_result()
    e["ni_p_value"] = ni.p_value
    e["srm_51_49_p_value"] = check_srm([51_000, 49_000], [0.5, 0.5])
    e["srm_mild_p_value"] = check_srm([5_130, 4_870], [1, 1])
    e["srm_even_p_value"] = check_srm([1_020, 980], [1, 1])
    e["srm_three_p_value"] = check_srm([3_000, 1_000, 1_000], [60, 20, 20])
    p = NormalIndPower()
    e["power_d01_n1000"] = p.power(effect_size=0.1, nobs1=1000, alpha=0.05, ratio=1.0)
    e["mde_d_n1000_r1_5"] = p.solve_power(effect_size=None, nobs1=1000, alpha=0.05, power=0.8, ratio=1.5)
    e["n1_d005"] = p.solve_power(effect_size=0.05, nobs1=None, alpha=0.05, power=0.8, ratio=1.0)
    ca, cb = cuped(control), cuped(treatment)
    theta = compute_theta(ca, cb)
    ca.theta = theta
    cb.theta = theta
    e["cuped_theta"] = theta
    r = TwoSidedTTest(ca, cb, FrequentistConfig(alpha=ALPHA, difference_type="absolute")).compute_result()
    e["cuped_abs_point"] = r.expected
    e["cuped_abs_ci_lo"], e["cuped_abs_ci_hi"] = r.ci
    e["cuped_abs_p_value"] = r.p_value
    r = TwoSidedTTest(ca, cb, FrequentistConfig(alpha=ALPHA, difference_type="relative")).compute_result()
    e["cuped_rel_point"] = r.expected
    e["cuped_rel_p_value"] = r.p_value
    out = {
        "generated_by": "scripts/stats-fixtures.py (gbstats 0.8.0, statsmodels NormalIndPower)",
        "alpha": ALPHA,
        "expect": {k: float(v) for k, v in e.items()},
        "control": control,
        "treatment": treatment,
    }
    # One user per line: readable diffs when the inputs change.
    text = json.dumps(out, indent=1)
    text = re.sub(r"\[\s+(-?\d+),\s+(-?\d+),\s+(-?\d+)\s+\]", r"[\1, \2, \3]", text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
