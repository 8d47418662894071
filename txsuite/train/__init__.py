"""Training a cell (L4): assembled by `build_training` (build.py), stepped by a trainer
(trainer.py; pipeline.py and deepspeed.py for the schedules that own the step), looped by
`train_steps` (loop.py), evaluated on the shared validation windows (evaluation.py).

    training = build_training(cell)                # data, model, techniques, optimizer, trainer
    result = train_steps(training, sync)           # -> TrainResult (loss curve, step times, ...)
    training.trainer.evaluate(training.val_batches, per_sequence=True)   # -> Evaluation

Other modules: optimizers (one builder per name of txsuite.config.spec.OPTIMIZERS), schedule
(LR), distributed (process group, reductions over ranks), finetune (a short fine-tune through
the same step, with a pluggable objective).
"""
from txsuite.train.build import Training, build_training, make_trainer, seed_everything
from txsuite.train.evaluation import EVAL_BATCH, Evaluation, val_losses
from txsuite.train.loop import Diverged, TrainResult, train_steps
from txsuite.train.optimizers import build_optimizer
from txsuite.train.schedule import build_schedule
from txsuite.train.trainer import Trainer, language_modelling

__all__ = ["EVAL_BATCH", "Diverged", "Evaluation", "TrainResult", "Trainer", "Training", "build_optimizer",
           "build_schedule", "build_training", "language_modelling", "make_trainer", "seed_everything",
           "train_steps", "val_losses"]
