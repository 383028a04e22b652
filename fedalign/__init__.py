"""FedAlign: federated transfer learning with adversarial domain alignment.

This package holds the method and nothing of HTTP, SQL or Celery: models, local steps, the round schedule
as a pure state machine, aggregation, parameter (de)serialisation, datasets and the simulator.
"""

__version__ = "0.1.0"
