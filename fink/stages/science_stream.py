"""The science archive as a stream: the schema its files are read with, its new files as a
streaming source, and each micro-batch joined to its raw alerts. The stages after
raw2science (distribution, archive) read their source through this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fink.config import FinkConfig
from fink.survey import description as surveys

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType


def stored_schema(spark: "SparkSession", science_path: str, producer: Any = None, survey: str = "ztf",
                  from_files: bool = True) -> "StructType":
    """The schema the science archive's files are read with (:mod:`~fink.stages.science_table`):
    the layout its root records (and ``from_files``), else what raw2science writes with
    ``producer`` (its :class:`~fink.stages.raw2science.Raw2ScienceConfig`; by default
    ``survey``'s built-in modules), so that the stages may start in any order."""
    from fink.stages import raw2science as r2s
    from fink.stages import science_table

    cfg = producer or r2s.Raw2ScienceConfig(modules=["builtin"], survey=survey)
    layout = science_table.read_layout(spark, science_path) if from_files else None
    if layout is not None:
        slim = layout["schema"]
    else:
        full = r2s.science_layout(spark, cfg, cfg.load_modules())
        slim = science_table.slim_schema(spark, cfg.description(), full, r2s.raw_schema(spark, cfg.survey))
    return science_table.stored_schema(slim, cfg.description())



def science_schema(spark: "SparkSession", science_path: str, producer: Any = None, survey: str = "ztf",
                   from_files: bool = True) -> "StructType":
    """The science rows' schema: every raw column, the columns raw2science adds (those
    :func:`stored_schema` reads), ``night`` last."""
    from fink.stages import raw2science as r2s
    from fink.stages import science_table

    survey = producer.survey if producer is not None else survey
    return science_table.full_schema(r2s.raw_schema(spark, survey),
                                     stored_schema(spark, science_path, producer, survey, from_files),
                                     surveys.load(survey))



def source(spark: "SparkSession", science_path: str, survey: str = "ztf", max_files_per_trigger: int = 0,
           producer: Any = None) -> "DataFrame":
    """The science archive as a stream of new files (its folder created if absent; at most
    ``max_files_per_trigger`` a micro-batch, 0: all new files), each file's rows as stored
    (:func:`stored_schema`): :func:`expander` joins them to their alerts."""
    from fink.io.filestore import FileStore

    store = FileStore(spark, science_path)
    store.fs.mkdirs(store.path())
    reader = spark.readStream.schema(stored_schema(spark, science_path, producer, survey)) \
        .option("basePath", science_path)
    if max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", max_files_per_trigger)
    return reader.parquet(science_path)



def expander(spark: "SparkSession", science_path: str, survey: str, fink_cfg: FinkConfig,
             full: "StructType") -> "Callable[[DataFrame], DataFrame]":
    """A micro-batch of :func:`source` -> the science rows of ``full`` (joined to their raw
    alerts in the raw archive its layout records, else the survey's default one)."""
    from fink.stages import raw2science as r2s
    from fink.stages import science_table

    description = surveys.load(survey)
    raw_schema = r2s.raw_schema(spark, survey)

    def expand(batch: "DataFrame") -> "DataFrame":
        layout = science_table.read_layout(spark, science_path)  # a small file: its latest, each batch
        if layout is None:  # an archive written whole, before layouts: beside the survey's raw archive
            return science_table.expand(batch, r2s.Raw2ScienceConfig(survey=survey).paths(fink_cfg)["raw"],
                                        raw_schema, description, full)
        new = [c for c in layout["schema"].fieldNames() if c not in full.fieldNames() and c != layout["key"]]
        if new:  # raw2science writes columns this query would not send: say so, not drop them
            raise science_table.LayoutChanged(
                f"{science_path}: raw2science now writes {', '.join(new)}, which this query started without: "
                "restart it to read them")
        return science_table.expand(batch, layout["raw"], raw_schema, description, full)

    return expand
