"""Training loops (Lightning) shared by distillation and recovery fine-tuning.

- ``config.TrainConfig``: steps, batch, schedule, clipping, checkpoints, LoRA.
- ``module.CausalLMModule``: override ``training_loss``; ``Frozen`` holds a teacher outside the
  checkpoint.
- ``data.BlockDataModule``: token blocks (+ per-row extras such as cached teacher logits).
- ``trainer.build_trainer`` / ``trainer.fit``: trainer from ``hardware``, resume from last.ckpt.
- ``lora.apply_lora`` / ``lora.merge_lora``: peft adapters.
"""
