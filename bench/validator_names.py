"""The label-free validators' names (bench.validators computes them), apart from their computation (which
builds models and reads data), for the readers of the logs (bench.chosen, bench.paired)."""

VALIDATORS = ("im", "neg_entropy", "diversity", "bnm", "snd")
