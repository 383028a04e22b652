"""The backend's services: artifact store, orchestrator, aggregation, sweep, events; routers call these."""
