"""Is one scheme's error really lower than another's? Differences over seeds with their 95% intervals.

Seeds are paired by construction: within one model block, the same seed gives the same initial weights
and data order for every α, so two cells are compared on the seeds both have (paired t, and a paired
bootstrap from BOOTSTRAP_MIN_N seeds on). Cells that share fewer than 2 ok seeds are compared with Welch's
t on all their ok seeds; with fewer than 2 on either side nothing can be concluded, and the result says so.

A side names a scheme, optionally narrowed to an α and r (the spec `NAME[:alpha=A][,r=R]`, or the dict
{"scheme": NAME, "alpha": A, "r": R}): "GNP", "sam:r=0.05", "gnp:alpha=0.3,r=0.05". Where more than one
cell matches in a block, the one with the lowest mean top-1 error is taken, as the scheme table does: that
choice is made on the data tested, so name α and r to test a cell fixed in advance.
"""

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.errors import AnalysisError
from analysis.summary import (
    METRICS,
    block_of,
    choose,
    scheme_rank,
    summarize_trials,
    trial_scores,
    with_schemes,
)
from gnp import variants

CONFIDENCE = 0.95
BOOTSTRAP_MIN_N = 5  # below this a bootstrap only permutes a handful of values: its interval is too narrow
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
DEFAULT_PAIRS = (("GNP", "Standard"), ("GNP", "SAM"), ("SAM", "Standard"))
METRIC_NAMES = {"top1": "test_top1_err", "top5": "test_top5_err"}
SPEC_HELP = "NAME[:alpha=A][,r=R], e.g. GNP, sam:r=0.05, gnp:alpha=0.3,r=0.05 (NAME: a scheme of the table)"


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a scheme, with α and r pinned or left to the choice of the best cell."""

    scheme: str
    alpha: float | None = None
    r: float | None = None

    def __str__(self) -> str:
        pinned = [f"{k}={v:g}" for k, v in (("alpha", self.alpha), ("r", self.r)) if v is not None]
        return self.scheme + (":" + ",".join(pinned) if pinned else "")

    def matches(self, cells: pd.DataFrame) -> pd.Series:
        keep = cells["scheme"] == self.scheme
        for name in ("alpha", "r"):
            if getattr(self, name) is not None:
                keep &= np.isclose(cells[name], getattr(self, name), rtol=1e-9, atol=1e-12)
        return keep


def parse_side(spec, schemes) -> Side:
    """A Side from a spec string or dict; `schemes` are the scheme names the results hold."""
    if isinstance(spec, dict):
        fields = dict(spec)
    elif isinstance(spec, str):
        name, _, pins = spec.strip().partition(":")
        fields = {"scheme": name.strip()}
        for pin in filter(None, (p.strip() for p in pins.split(","))):
            key, equals, value = pin.partition("=")
            if not equals:
                raise AnalysisError(
                    f"bad comparison side {spec!r}: {pin!r} is not key=value; write {SPEC_HELP}"
                )
            fields[key.strip()] = value.strip()
    else:
        raise AnalysisError(
            f"a comparison side is a str or dict, got {type(spec).__name__}; write {SPEC_HELP}"
        )
    unknown = sorted(set(fields) - {"scheme", "alpha", "r"})
    if unknown or not fields.get("scheme"):
        why = f"unknown key {unknown[0]!r}" if unknown else "no scheme name"
        raise AnalysisError(f"bad comparison side {spec!r}: {why}; write {SPEC_HELP}")
    return Side(
        _scheme_name(str(fields["scheme"]), schemes, spec),
        _number(fields, "alpha", spec),
        _number(fields, "r", spec),
    )


def _scheme_name(name: str, schemes, spec) -> str:
    """The scheme `name` means, by label or variant name, any case ("gnp" and "GNP" are GNP)."""
    known = variants.REGISTRY.get(name.lower())
    for candidate in (name, known.label if known else None):
        for scheme in schemes:
            if candidate is not None and scheme.lower() == candidate.lower():
                return scheme
    have = ", ".join(sorted(schemes, key=scheme_rank)) or "none"
    raise AnalysisError(f"no scheme {name!r} (from {spec!r}) in these results; they hold: {have}")


def _number(fields: dict, key: str, spec) -> float | None:
    value = fields.get(key)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise AnalysisError(f"bad comparison side {spec!r}: {key} must be a number, got {value!r}")
    return number


def compare(df: pd.DataFrame, a, b, pick: str = "final", metric: str = "top1") -> pd.DataFrame:
    """Side `a` minus side `b` in test error (percentage points) for each model block that has both.

    `a` and `b` are specs (see the module doc: "GNP", "SAM", "gnp:alpha=0.3,r=0.05", or a dict), `pick`
    scores each trial at its last epoch ("final", the default: no epoch chosen on the tested data) or at
    its best ("best"), `metric` is "top1" or "top5". Columns: the block; each side's spec (a, b), cell
    (a_variant, a_alpha, a_r, ...) and number of matching cells (a_cells: more than 1 means the cell was
    chosen on these data); the test ("paired t", "Welch" or None); n (seeds both have), a_n and b_n (ok
    seeds); the means (over the common seeds when paired); diff = a − b; its CONFIDENCE interval (ci_low,
    ci_high); the p-value; the paired bootstrap interval (boot_low, boot_high; n ≥ BOOTSTRAP_MIN_N only);
    a one-line conclusion; and the pick.
    """
    if metric not in METRIC_NAMES:
        raise AnalysisError(f"metric must be one of {', '.join(METRIC_NAMES)}, got {metric!r}")
    trials = trial_scores(df, pick)
    cells = with_schemes(summarize_trials(trials))
    schemes = set(cells["scheme"])
    sides = parse_side(a, schemes), parse_side(b, schemes)
    return compare_cells(trials, cells, *sides, METRIC_NAMES[metric]).assign(pick=pick)


def default_pairs(schemes) -> list[tuple[str, str]]:
    """GNP − Standard, GNP − SAM, SAM − Standard: those whose two schemes the results hold."""
    return [(a, b) for a, b in DEFAULT_PAIRS if a in schemes and b in schemes]


def compare_cells(trials: pd.DataFrame, cells: pd.DataFrame, a: Side, b: Side, column: str) -> pd.DataFrame:
    """compare() on scored trials and the summary's scheme cells (with_schemes), one row per block."""
    if column not in METRICS:
        raise AnalysisError(f"metric column must be one of {', '.join(METRICS)}, got {column!r}")
    ok = trials[trials["status"] == "ok"]
    rows, columns = [], block_of(cells)
    for block, group in cells.groupby(columns, sort=True):
        matches = [group[side.matches(group)] for side in (a, b)]
        if not (len(matches[0]) and len(matches[1])):
            continue
        picked = [choose(match, columns).iloc[0] for match in matches]
        if all(picked[0][k] == picked[1][k] for k in ("variant", "alpha", "r")):
            raise AnalysisError(
                f"{a} and {b} are the same cell in {'/'.join(block)}; name two different ones"
            )
        rows.append(
            {
                **dict(zip(columns, block, strict=True)),
                "a": str(a),
                "b": str(b),
                **{f"{s}_{k}": picked[i][k] for i, s in enumerate("ab") for k in ("variant", "alpha", "r")},
                "a_cells": len(matches[0]),  # more than 1: the cell was chosen on these results
                "b_cells": len(matches[1]),
                "metric": column,
                **difference(*(_seed_values(ok, cell, column, columns) for cell in picked),
                             names=(str(a), str(b))),
            }
        )
    if not rows:
        raise AnalysisError(f"no model block holds both {a} and {b}; see the cells with --kind cells")
    return pd.DataFrame(rows)


def _seed_values(ok: pd.DataFrame, cell: pd.Series, column: str, block: list[str]) -> pd.Series:
    """The cell's ok trials' values, indexed by seed."""
    keep = np.ones(len(ok), dtype=bool)
    for key in (*block, "variant", "alpha", "r"):
        keep &= (ok[key] == cell[key]).to_numpy()
    return ok.loc[keep].set_index("seed")[column].dropna()


def difference(a: pd.Series, b: pd.Series, names=("A", "B")) -> dict:
    """a − b for values indexed by seed: paired on the common seeds when there are 2 or more, else Welch
    when each side has 2 or more, else no test (the means are shown, nothing is concluded). Interval and
    p-value from scipy's t tests; `names` are the sides' names in the conclusion."""
    common = a.index.intersection(b.index).sort_values()
    paired = len(common) >= 2
    x, y = (a[common], b[common]) if paired else (a, b)
    x, y = x.to_numpy(float), y.to_numpy(float)
    mean_a, mean_b = (v.mean() if len(v) else math.nan for v in (x, y))
    result = dict(test=None, n=len(common), a_n=len(a), b_n=len(b), a_mean=mean_a, b_mean=mean_b,
                  diff=mean_a - mean_b, ci_low=math.nan, ci_high=math.nan, p=math.nan, boot_low=math.nan,
                  boot_high=math.nan)  # fmt: skip
    if not paired and min(len(x), len(y)) < 2:
        why = (
            f"{len(common)} common seed(s) and {len(a)} + {len(b)} ok seeds; a paired test needs 2 common "
            "seeds, Welch's 2 on each side"
        )
        return {**result, "conclusion": f"n too small to conclude anything ({why})"}
    result["test"] = "paired t" if paired else "Welch"
    if _no_spread(x - y) if paired else _no_spread(x) and _no_spread(y):
        return {**result, "conclusion": _no_spread_text(result)}
    test = stats.ttest_rel(x, y) if paired else stats.ttest_ind(x, y, equal_var=False)
    interval = test.confidence_interval(CONFIDENCE)
    result.update(ci_low=float(interval.low), ci_high=float(interval.high), p=float(test.pvalue))
    if paired and len(common) >= BOOTSTRAP_MIN_N:
        result["boot_low"], result["boot_high"] = paired_bootstrap(x - y)
    return {**result, "conclusion": _verdict(result, names)}


def paired_bootstrap(d: np.ndarray) -> tuple[float, float]:
    """Percentile CONFIDENCE interval of the mean of the paired differences `d`, from BOOTSTRAP_RESAMPLES
    resamples of the seeds with a fixed generator (numpy default_rng(BOOTSTRAP_SEED)): reproducible."""
    result = stats.bootstrap(
        (d,),
        np.mean,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        random_state=np.random.default_rng(BOOTSTRAP_SEED),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mean_interval(std: pd.Series, n: pd.Series) -> pd.Series:
    """Half-width of the t CONFIDENCE interval of a mean over n seeds with sample std `std`; NaN for n < 2."""
    n = n.astype(float).where(n >= 2)
    return stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * std / np.sqrt(n)


def _no_spread(values: np.ndarray) -> bool:
    """Every value the same (to rounding): a t statistic would be 0/0 or infinite."""
    return bool(np.ptp(values) <= 1e-9 * max(1.0, float(np.abs(values).max())))


def _no_spread_text(result: dict) -> str:
    same = "every seed gives the same difference" if result["test"] == "paired t" else "no seed differs"
    return (
        f"{same} ({result['diff']:+.2f}): no spread to test against; more seeds or a finer metric are needed"
    )


def _verdict(result: dict, names) -> str:
    low, high = result["ci_low"], result["ci_high"]
    if low > 0 or high < 0:
        return (
            f"{names[0] if high < 0 else names[1]} has the lower error ({CONFIDENCE:.0%} interval excludes 0)"
        )
    return f"no difference shown ({CONFIDENCE:.0%} interval includes 0)"
