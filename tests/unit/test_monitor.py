from fink.runtime.monitor import QueryMonitor, query_row


class Q:
    name, id, isActive = "q1", "id-1", True
    lastProgress = {"batchId": 4, "numInputRows": 10, "inputRowsPerSecond": 12.345,
                    "processedRowsPerSecond": 99.99, "durationMs": {"triggerExecution": 80}}
    recentProgress = [{"numInputRows": 5}, {"numInputRows": 10}]


def test_query_row_flattens_last_progress():
    assert query_row(Q()) == {"query": "q1", "active": True, "batch": 4, "input rows": 10, "input rows/s": 12.3,
                              "processed rows/s": 100.0, "batch ms": 80, "total rows": 15, "lag": None,
                              "quarantined": None}


def test_query_row_reads_kafka_lag_and_observed_quarantine():
    q = Q()
    q.lastProgress = {**Q.lastProgress, "sources": [{"metrics": {"maxOffsetsBehindLatest": "42"}}]}
    q.recentProgress = [{"numInputRows": 5, "observedMetrics": {"stream2raw": {"quarantined": 2}}},
                        {"numInputRows": 10, "observedMetrics": {"stream2raw": {"quarantined": 3}}}]
    row = query_row(q)
    assert row["lag"] == 42 and row["quarantined"] == 5


def test_query_row_before_first_batch():
    q = Q()
    q.lastProgress, q.recentProgress = None, []
    row = query_row(q)
    assert row["batch"] is None and row["total rows"] == 0 and row["input rows/s"] == 0.0


def test_monitor_outside_a_notebook_logs(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="fink")
    QueryMonitor("smoke", every=0)([Q()])
    assert "smoke" in caplog.text and "q1" in caplog.text
