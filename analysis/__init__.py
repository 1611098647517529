"""Result tables to the paper's mean ± std tables and figures (pandas + pyarrow; never torch or Ray).

From a notebook or a script (the command line is `python -m analysis --help`):

    df = analysis.load_results("results/digits")  # every trial's rows, one DataFrame
    print(analysis.format_table(df))  # one chosen cell per scheme (Standard / GNP / SAM ...), Markdown
    analysis.summarize(df)  # mean, std and n for every (variant, α, r)
    analysis.compare(df, "GNP", "SAM")  # GNP − SAM per model over the seeds both have: interval, p-value
"""

from analysis.comparison import compare
from analysis.errors import AnalysisError
from analysis.figures import make_figures
from analysis.load import load_results
from analysis.summary import scheme_of, select_schemes, summarize, trial_scores
from analysis.tables import format_comparison, format_table

__all__ = [
    "AnalysisError",
    "compare",
    "format_comparison",
    "format_table",
    "load_results",
    "make_figures",
    "scheme_of",
    "select_schemes",
    "summarize",
    "trial_scores",
]
