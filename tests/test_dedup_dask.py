"""mithril.dedup on a Dask cluster: real worker processes, identical results to one machine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mithril import ConfigError
from mithril.dedup import dedup_parquet, dedup_parquet_dask

distributed = pytest.importorskip("dask.distributed")

SLICE = Path(__file__).resolve().parent / "data" / "corpus_slice.parquet"


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The slice as two files of several row groups each (every row group is a task)."""
    d = tmp_path_factory.mktemp("inputs")
    table = pq.read_table(SLICE)
    pq.write_table(table.slice(0, 500), d / "a.parquet", row_group_size=97)
    pq.write_table(table.slice(500), d / "b.parquet", row_group_size=130)
    return [d / "a.parquet", d / "b.parquet"]


def concat(paths: list[Path]) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in paths])


@pytest.mark.parametrize(
    "options",
    [{}, {"keep": "longest"}, {"verify": False}, {"bands": (12, 10), "seed": 5}],
    ids=["default", "longest", "unverified", "bands-seed"],
)
def test_same_result_as_one_machine(
    tmp_path: Path, client: object, inputs: list[Path], options: dict
) -> None:
    one = dedup_parquet(inputs, tmp_path / "one", emit_clusters=True, **options)
    many = dedup_parquet_dask(
        inputs,
        tmp_path / "many",
        client=client,
        emit_clusters=True,
        shuffle_partitions=3,
        **options,
    )
    assert many.removed > 0
    assert np.array_equal(one.removed_ids, many.removed_ids)
    assert (many.documents_in, many.documents_out, many.clusters) == (
        one.documents_in,
        one.documents_out,
        one.clusters,
    )
    assert many.shingles == one.shingles and many.bytes_in == one.bytes_in
    kept_one = concat([tmp_path / "one" / "a.parquet", tmp_path / "one" / "b.parquet"])
    parts = sorted((tmp_path / "many" / "a").glob("part-*.parquet")) + sorted(
        (tmp_path / "many" / "b").glob("part-*.parquet")
    )
    assert len(parts) == 6 + 4
    assert concat(parts).equals(kept_one)
    clusters = concat(sorted((tmp_path / "many" / "clusters").glob("*.parquet")))
    assert clusters.equals(pq.read_table(tmp_path / "one" / "clusters.parquet"))


def test_refusals_happen_before_any_task(
    tmp_path: Path, client: object, inputs: list[Path]
) -> None:
    with pytest.raises(ConfigError, match="no column 'body'"):
        dedup_parquet_dask(inputs, tmp_path / "o", client=client, column="body")
    with pytest.raises(ConfigError, match="is an input file"):
        dedup_parquet_dask(inputs, inputs[0], client=client)
    with pytest.raises(ConfigError, match="ngram"):
        dedup_parquet_dask(inputs, tmp_path / "o", client=client, ngram=0)
    dedup_parquet_dask(inputs, tmp_path / "o", client=client)
    with pytest.raises(ConfigError, match="exists"):
        dedup_parquet_dask(inputs, tmp_path / "o", client=client)


def test_cli_on_a_local_cluster(tmp_path: Path, inputs: list[Path], run_cli) -> None:  # type: ignore[no-untyped-def]
    code, stdout, stderr = run_cli(
        "dedup", "run", *inputs, "-o", tmp_path / "out", "--dask", "local", "--json"
    )
    assert code == 0, stderr
    one = dedup_parquet(inputs, tmp_path / "one")
    assert json.loads(stdout)["removed"] == one.removed
    code, _, stderr = run_cli(
        "dedup", "run", *inputs, "-o", tmp_path / "x", "--dask", "local", "--bloom"
    )
    assert code == 1 and "cannot run on --dask" in stderr
