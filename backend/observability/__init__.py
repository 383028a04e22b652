"""Operations: Prometheus metrics (`metrics`, `queues`, `exposition`) and structured logs (`logs`).

The service code records through `metrics` (counters and histograms of this process) and binds the
federation, round and node a request or step is about through `logs.bind`; `exposition` serves both
process metrics and the scrape-time queue gauges at ``GET /metrics``.
"""
