"""The optimizer step of a pipeline-parallel cell (L4).

The schedule runs forward and backward of every chunk of a micro-batch across the stages;
the first stage feeds it tokens, the last stage targets and collects the per-chunk losses.
Gradient hooks, clipping and the optimizer step are the single-process ones (Trainer)."""
from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist

from txsuite.model import sequence_loss_sums
from txsuite.train.evaluation import Evaluation
from txsuite.train.trainer import Trainer


class PipelineTrainer(Trainer):
    @property
    def holds_loss(self) -> bool:
        return self.setup.pipeline.last

    def step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        pipe = self.setup.pipeline
        self.model.train()
        total = torch.zeros((), device=self.device)
        for _ in range(self.grad_accum):
            x, y = next(batches)  # [B, T] each; the schedule splits B into n_microbatches chunks
            x = x.to(self.device, non_blocking=self.non_blocking)
            y = y.to(self.device, non_blocking=self.non_blocking)
            args = (x,) if pipe.first else ()
            losses: list[torch.Tensor] = []
            kwargs = {"target": y, "losses": losses} if pipe.last else {}
            with self.autocast():
                pipe.schedule.step(*args, **kwargs)
            if pipe.last:  # each chunk's loss is already divided by all chunks of the step
                total += torch.stack([loss.detach() for loss in losses]).sum()
        self.apply_gradients()
        return total

    @torch.no_grad()
    def evaluate(self, batches: list[tuple[torch.Tensor, torch.Tensor]], per_sequence: bool = False) -> Evaluation:
        """Forward only, stage by stage with point-to-point sends: the same fixed validation
        windows as every other cell, whatever the chunking. Every rank returns the result."""
        pipe = self.setup.pipeline
        self.model.eval()
        me = dist.get_rank()
        parts = dict(zip(pipe.stage_ids, self.setup.parts))
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        count = torch.zeros((), device=self.device, dtype=torch.float64)
        n_seq = sum(len(x) for x, _ in batches)
        seq_sums = torch.zeros(n_seq, device=self.device, dtype=torch.float64)
        seq_counts = torch.zeros(n_seq, device=self.device, dtype=torch.float64)
        offset = 0
        for x, y in batches:
            hidden = None
            for s in range(pipe.n_stages):
                owner = pipe.rank_of_stage[s]
                if owner != me:
                    continue
                if s == 0:
                    inputs = x.to(self.device)
                elif pipe.rank_of_stage[s - 1] == me:
                    inputs = hidden
                else:
                    inputs = self._receive(x.shape, pipe.rank_of_stage[s - 1])
                with self.autocast():
                    hidden = parts[s](inputs)
                if s == pipe.n_stages - 1:  # the same per-token sums as txsuite.train.evaluation
                    sums, counts = sequence_loss_sums(hidden, y.to(self.device))
                    loss_sum += sums.sum()
                    count += counts.sum()
                    seq_sums[offset:offset + len(x)] = sums
                    seq_counts[offset:offset + len(x)] = counts.double()
                elif pipe.rank_of_stage[s + 1] != me:
                    dist.send(hidden.contiguous(), dst=pipe.rank_of_stage[s + 1])
            offset += len(x)
        # only last-stage ranks hold sums; every copy of them has the same ratios
        totals = torch.cat([torch.stack([loss_sum, count]), seq_sums, seq_counts])
        dist.all_reduce(totals)
        mean = float(totals[0] / totals[1].clamp(min=1))
        seq_sums, seq_counts = totals[2:2 + n_seq], totals[2 + n_seq:]
        return Evaluation(mean, (seq_sums / seq_counts.clamp(min=1)).tolist() if per_sequence else None)

    def _receive(self, token_shape: torch.Size, src: int) -> torch.Tensor:
        d_model = self.setup.parts[0].cfg.d_model
        dtype = torch.float32 if self.setup.facts.get("param_dtype") != "bfloat16" else torch.bfloat16
        buffer = torch.empty(*token_shape, d_model, device=self.device, dtype=dtype)  # [B, T, C]
        dist.recv(buffer, src=src)
        return buffer
