"""A tiny randomly initialised BLIP captioner, built offline from a config.

``write_tiny_blip(folder)`` saves a ``BlipForConditionalGeneration`` (hidden size 32,
2 layers, 32x32 px images, a 64-word vocabulary) and its ``BlipProcessor`` with
``save_pretrained``, so the folder loads like a real checkpoint does: ``AutoConfig``,
``AutoProcessor``, ``from_pretrained``. No network, a few seconds. Its captions are
words picked by random weights: the same on every run for the same seed, meaningless
otherwise. The tests and ``benchmarks/bench_caption_local.py`` use it.
"""

from __future__ import annotations

from pathlib import Path

#: the tokenizer's words after the special tokens; lowercase, as BERT's normaliser leaves them
WORDS = (
    "a an the of on in with and is are two three man woman dog cat bird car bus tree house "
    "street table plate food pizza red blue green white black small large old young sitting "
    "standing walking running near next to front top some group people field water sky grass "
    "photo picture view close up its their over under".split()
)
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")
#: weights this large (BLIP's defaults are 0.02, and 1e-10 in the vision tower) make the
#: captions depend on the image; the [SEP] (end of caption) bias makes some captions end
#: before 12 tokens and others run on, so both finish reasons occur
INIT_STD = 0.3
SEP_BIAS = 2.0


def write_tiny_blip(folder: str | Path, seed: int = 0) -> Path:
    """Build and save the tiny BLIP (model, image processor, tokenizer) into ``folder``;
    returns the folder. The weights depend only on ``seed``."""
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(SPECIALS + tuple(dict.fromkeys(WORDS)))}
    # transformers 5 ignores vocab_file= here: the vocabulary goes in as a dict
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, bos_token="[DEC]",
                                  model_max_length=64)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)

    ids = {tok: vocab[tok] for tok in SPECIALS}
    config = BlipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64,
                     "encoder_hidden_size": 32, "pad_token_id": ids["[PAD]"], "bos_token_id": ids["[DEC]"],
                     "eos_token_id": ids["[SEP]"], "sep_token_id": ids["[SEP]"]},
        projection_dim=32, initializer_range=INIT_STD,
    )
    config.vision_config.initializer_range = config.text_config.initializer_range = INIT_STD
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[ids["[SEP]"]] = SEP_BIAS
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return folder
