"""FedAlign's node runners: Celery tasks and the typed HTTP client that serves nodes outside Celery."""
