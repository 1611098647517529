"""Result tables to the paper's mean ± std tables and figures (pandas + pyarrow; never torch or Ray)."""
