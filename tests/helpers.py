"""Build fairseq models and samples in-process for numeric tests."""

import os

import torch
from fairseq import checkpoint_utils, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import fairseq_headprune  # noqa: F401  (registers the task)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--encoder-layers", "2", "--decoder-layers", "3", "--encoder-embed-dim", "32",
         "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
         "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "4",
         "--decoder-attention-heads", "4", "--dropout", "0", "--attention-dropout", "0",
         "--activation-dropout", "0"]


def build(data_dir, task="translation_headprune", arch="transformer_iwslt_de_en",
          extra=(), seed=1):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [data_dir, "--task", task, "--arch", arch, "--cpu", *SMALL, *extra]
    )
    cfg = convert_namespace_to_omegaconf(args)
    t = tasks.setup_task(cfg.task)
    torch.manual_seed(seed)
    model = t.build_model(cfg.model)
    return t, model, cfg


def load(ckpt, data_dir, task="translation_headprune", **task_overrides):
    parser = options.get_generation_parser()
    args = options.parse_args_and_arch(parser, [data_dir, "--task", task, "--path", ckpt])
    for k, v in task_overrides.items():
        setattr(args, k, v)
    cfg = convert_namespace_to_omegaconf(args)
    t = tasks.setup_task(cfg.task)
    models, _ = checkpoint_utils.load_model_ensemble([ckpt], task=t, arg_overrides={"data": data_dir})
    return t, models[0].eval()


def batch(task, split="test", n=6):
    task.load_dataset(split)
    ds = task.dataset(split)
    return ds.collater([ds[i] for i in range(n)])


def generate(task, model, sample, beam=4):
    gen = task.build_generator([model], options.parse_args_and_arch(
        options.get_generation_parser(), ["x", "--beam", str(beam)]))
    with torch.no_grad():
        return gen.generate([model], sample)
