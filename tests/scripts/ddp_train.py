"""Launched by tests/test_distributed.py with `torchrun --nproc_per_node 2`: trains a tiny model with
SSLTrainer on CPU/gloo and records, per rank, a checksum of each batch it saw and of the final weights."""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import hf_ssl  # noqa: E402,F401
from hf_ssl.modeling.registry import get_method  # noqa: E402
from hf_ssl.training.arguments import SSLTrainingArguments  # noqa: E402
from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream  # noqa: E402
from hf_ssl.training.trainer import SSLTrainer  # noqa: E402
from tiny_configs import tiny_config  # noqa: E402

method, out = sys.argv[1], sys.argv[2]
config = tiny_config(method)
torch.manual_seed(0)
model = get_method(method).model_class(config)
ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=0), build_view_generator(config))
args = SSLTrainingArguments(output_dir=out, max_steps=3, per_device_train_batch_size=8, learning_rate=1e-3,
                            logging_steps=1, save_strategy="steps", save_steps=3, disable_tqdm=True,
                            ddp_backend="gloo")
batch_sums = []



class RecordingTrainer(SSLTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        views = inputs["pixel_values"]
        first = views[0] if isinstance(views, list) else views
        batch_sums.append(float(first.double().sum()))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


trainer = RecordingTrainer(model=model, args=args, train_dataset=ds)
trainer.train()
rank = int(os.environ["RANK"])
params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"rank": rank, "world_size": torch.distributed.get_world_size(), "batch_sums": batch_sums,
               "param_sum": float(params.double().sum()), "param_abs": float(params.double().abs().sum())}, f)
