"""The tiny SSLTrainer run of the method tests: a few optimizer steps, a log every step, no checkpoints."""


def tiny_training_run(model, train_dataset, output_dir, max_steps=3, batch_size=4, learning_rate=1e-3):
    """Train `model` on `train_dataset` for `max_steps` steps with `SSLTrainer`; returns the trainer."""
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.trainer import SSLTrainer

    args = SSLTrainingArguments(output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=batch_size,
                                learning_rate=learning_rate, logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = SSLTrainer(model=model, args=args, train_dataset=train_dataset)
    trainer.train()
    return trainer


def loss_logs(trainer) -> list:
    """The per-step training logs (the entries of the log history that carry a loss)."""
    return [h for h in trainer.state.log_history if "loss" in h]
