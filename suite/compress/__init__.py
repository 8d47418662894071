"""Compression of the trained model, and what it costs in quality, size and inference speed (L2).

A cell's `compress` block (suite.spec.CompressSpec) picks a quantization and a pruning; every
compressed cell reports its validation loss after compression, which the report sets against
the dense, full-precision cell of the same matrix (suite.report.compression).

The worker calls two functions:

    from suite.compress import apply_during_training, finish_after_training, CompressContext

    setup = apply_during_training(setup, cell)
        After the other techniques, before the optimizer is built. Checks the host first (raises
        suite.techniques.Unsupported for fp8 / 2:4 without a capable GPU, int4-weight without
        its kernels), so an impossible cell is skipped before it trains. Then the training-time
        methods: QAT prepare (fake-quantizing linears), fp8 training, or a prune-while-training
        schedule registered in setup.step_hooks. Records what it did in setup.facts. A cell
        with nothing to compress returns setup untouched.

    metrics = finish_after_training(CompressContext(
        model=setup.model, cell=cell, device=device,
        evaluate=evaluate,              # Callable[[nn.Module], float]: mean val loss of a module
        train_batches=batches,          # iterator of (x, y) micro-batches, for a fine-tune
        dense_val_loss=val_loss,        # val loss of the trained model, before this call
        make_optimizer=make_optimizer,  # Callable[[nn.Module], Optimizer], for a fine-tune
        autocast=setup.autocast,        # optional: the cell's autocast for fine-tune and benchmark
        step_hooks=setup.step_hooks,    # the prune-while-training schedule, to complete
    ))
        After training and its final evaluation. Completes training-time methods (final
        sparsity, masks made permanent, QAT convert), then applies the post-training ones
        (prune -> optional fine-tune, distilled from a copy of the dense model -> quantize),
        evaluates, measures size and inference speed. The model is compressed in place.
        Returns a dict to merge into the record's metrics:
          compressed_val_loss, compressed_val_ppl      after compression
          uncompressed_val_loss                        the same trained weights before the
                                                       post-training steps (QAT: fake quant off;
                                                       None for prune-while-training alone)
          quality_delta_vs_uncompressed                compressed - uncompressed
          model_size_bytes, dense_model_size_bytes     parameters + buffers as stored (size.py)
          size_ratio_vs_uncompressed
          prefill_tokens_per_s, decode_tokens_per_s, decode_ms_per_token (+ their settings;
                                                       decode re-runs the context: no KV cache)
          quantization_phase, pruning_phase, sparsity_achieved, pruned_weights,
          quantized_layers, quantization_config, quantization_backend, heads/neurons removed,
          finetune_loss_curve, distill_kl_curve, compress_wall_s ... (what applies)
        For a cell that compresses nothing it still returns model_size_bytes and the inference
        metrics (and compressed_val_loss = dense_val_loss), in well under 2 s on the tiny
        model: the dense control needs them for the deltas. It returns {} for a model that is
        not whole in this process (pipeline stage, sharded parameters).

Both may raise Unsupported(reason): the worker records the cell as skipped.

Modules, one job each: plan (which method runs when; host checks), quantize (torchao),
prune (magnitude masks, schedules, 2:4), structured (heads / neurons removed), distill (the
fine-tune and its distillation loss), inference (prefill / decode timing), size (bytes).
"""
from suite.compress.api import CompressContext, apply_during_training, finish_after_training

__all__ = ["CompressContext", "apply_during_training", "finish_after_training"]
