"""The names of a node's three models (DESIGN.md section 1), the one list the architectures, the round
schedule and the server read: G the feature extractor, T the task model, D the domain discriminator.

Imports nothing, so that every layer can use it (the architectures in `fedalign.models` are imported by the
config's privacy check, and must not import the config back).
"""

MODELS = ("G", "T", "D")
