"""FedAlign: federated transfer learning with adversarial domain alignment.

This package holds the method and nothing of HTTP, SQL or Celery: models, local steps, the round schedule
(phases as values) and the pure state machine that runs it, metrics, aggregation and its weights,
parameter (de)serialisation, datasets, secure aggregation, differential privacy (its accounting apart from
its Opacus steps), named hyperparameter presets and the simulator.
"""

__version__ = "0.1.0"
