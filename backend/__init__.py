"""The FedAlign API service (FastAPI): federations, nodes, rounds, submissions, aggregation, live events."""
