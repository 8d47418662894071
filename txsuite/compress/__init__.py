"""Model operations of compression, and their plan (L2): what the compression techniques
(txsuite/techniques: qat, float8 and prune_schedule during training, compression after it)
apply to a model. Nothing here knows about training loops or the worker.

Modules, one job each: plan (which method runs when; kernel probes), quantize (torchao),
prune (magnitude masks, schedules, 2:4), structured (heads / neurons removed), distill (the
distillation objective of the fine-tune after pruning), inference (prefill / decode timing),
size (bytes), targets (which layers are compressed). docs/compression.md explains every method
and record field.
"""
