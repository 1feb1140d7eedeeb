"""Synthetic caption batches for the vision-language tests.

The tiny text towers of the tests read token ids laid out as BOS (0), words drawn from [3, vocab), EOS (1), then
PAD (2), with an attention mask over BOS..EOS. `random_captions` draws such captions (one per image, or several per
image with a leading shape `(n, t)`); `image_text_batch` adds the random images of a dual-encoder batch.
"""

import torch

BOS, EOS, PAD = 0, 1, 2


def random_captions(generator, shape, length=16, vocab=600, min_length=3):
    """Token ids `[*shape, length]` and their attention mask: each caption is BOS, random words, EOS, padding; its
    length with BOS and EOS is drawn uniformly from [min_length, length)."""
    shape = tuple(shape)
    ids = torch.randint(3, vocab, (*shape, length), generator=generator)
    lengths = torch.randint(min_length, length, shape, generator=generator)
    mask = (torch.arange(length) < lengths[..., None]).long()
    ids[..., 0] = BOS
    ids.scatter_(-1, (lengths - 1)[..., None], EOS)
    ids[mask == 0] = PAD
    return ids, mask


def image_text_batch(n=4, seed=0, length=16, vocab=600, texts_per_image=None, image_size=32):
    """A dual-encoder batch: `pixel_values [n, 3, image_size, image_size]`, `input_ids` / `attention_mask`
    `[n, length]` (or `[n, texts_per_image, length]`); the captions are drawn first, then the images."""
    g = torch.Generator().manual_seed(seed)
    ids, mask = random_captions(g, (n,) if texts_per_image is None else (n, texts_per_image), length, vocab)
    return {"pixel_values": torch.randn(n, 3, image_size, image_size, generator=g), "input_ids": ids,
            "attention_mask": mask}
