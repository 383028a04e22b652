"""The label-free validators' names (bench.validators computes them): here without torch, for the readers of
the logs (bench.chosen, bench.paired)."""

VALIDATORS = ("im", "neg_entropy", "diversity", "bnm", "snd")
