"""gnp.rows is the one declaration of a result row: the loop reports exactly its EPOCH_FIELDS, the writer
adds exactly the other columns, and the Parquet file holds the declared schema."""

import pyarrow as pa
from test_train import digits

from gnp.loop import train
from gnp.rows import EPOCH_FIELDS, RESULT_SCHEMA
from jobs import results as res


def test_the_loop_reports_the_declared_fields_and_the_writer_adds_the_rest(digits_root, tmp_path):
    cfg = digits(tmp_path, epochs=1)
    rows = train(cfg)
    assert set(rows[0]) == set(EPOCH_FIELDS) and set(EPOCH_FIELDS) <= set(RESULT_SCHEMA.names)
    written = res.rows_for_trial(cfg, rows, experiment="e", seeds_planned=1, version="v", dataset_id=None,
                                 trial_wall_s=None)
    assert list(written[0]) == RESULT_SCHEMA.names  # every declared column, in order, none beside them
    assert all(written[0][name] is not None for name in RESULT_SCHEMA.names if not RESULT_SCHEMA.field(name).nullable)
    table = pa.Table.from_pylist(written, schema=RESULT_SCHEMA)
    assert table.schema.equals(RESULT_SCHEMA) and table.num_rows == 1
