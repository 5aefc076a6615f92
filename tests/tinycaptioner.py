"""Tiny randomly initialised captioners (BLIP, BLIP-2), built offline from configs.

``write_tiny_blip(folder)`` saves a ``BlipForConditionalGeneration`` (hidden size 32,
2 layers, 32x32 px images, a 64-word vocabulary) and its ``BlipProcessor`` with
``save_pretrained``, so the folder loads like a real checkpoint does: ``AutoConfig``,
``AutoProcessor``, ``from_pretrained``. No network, a few seconds. Its captions are
words picked by random weights: the same on every run for the same seed, meaningless
otherwise. The tests and ``benchmarks/bench_caption_local.py`` use it.

``write_tiny_blip2(folder)`` does the same for a ``Blip2ForConditionalGeneration``
(a 2-layer vision tower, a 2-layer Q-Former with 4 query tokens and a 2-layer OPT
decoder) and its ``Blip2Processor``, whose word-level tokenizer is built here with the
``tokenizers`` library; the processor puts 4 ``<image>`` tokens before each prompt, as
transformers 5 expects.

``write_tiny_florence2(folder)`` saves a ``Florence2ForConditionalGeneration`` (a 4-stage
DaViT tower on 64x64 px images, 5 image tokens, a 2+2-layer BART) and its
``Florence2Processor`` (``CLIPImageProcessor``, a word-level tokenizer built here that
knows the ``<CAPTION>`` task's question): the generic ``AutoModelForImageTextToText`` path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    return _save(model, processor, folder)


#: BLIP-2's tokenizer: OPT's special tokens (``</s>`` is both start and end), then the image token
OPT_SPECIALS = ("<pad>", "<unk>", "</s>", "<image>")
#: how far the OPT decoder's final layer norm is moved along the ``</s>`` embedding, a bias on
#: the end of caption (OPT's output layer has none). The output layer is the input embedding,
#: so after the start token ``</s>`` the random decoder tends to repeat it: ended at once, most
#: captions would be empty. Pulled back this far, some end within 12 tokens and most run on
EOS_PUSH = -0.5
NUM_QUERY_TOKENS = 4


def write_tiny_blip2(folder: str | Path, seed: int = 0) -> Path:
    """Build and save the tiny BLIP-2 (model, image processor, tokenizer) into ``folder``;
    returns the folder. The weights depend only on ``seed``."""
    import torch
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        PreTrainedTokenizerFast,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(OPT_SPECIALS + tuple(dict.fromkeys(WORDS)))}
    ids = {tok: vocab[tok] for tok in OPT_SPECIALS}
    words = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    words.normalizer = normalizers.Lowercase()
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # OPT's tokenizer starts every text with </s>; the processor puts the image tokens before it
    words.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A $B", special_tokens=[("</s>", ids["</s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="</s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>", model_max_length=64)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    # "<image>" is in the vocabulary already, so the processor's add_tokens keeps its id
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer,
                               num_query_tokens=NUM_QUERY_TOKENS)

    tiny = {"intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = Blip2Config(
        vision_config={"hidden_size": 32, "image_size": 32, "patch_size": 8, **tiny},
        qformer_config={"hidden_size": 32, "max_position_embeddings": 64, "vocab_size": len(vocab), **tiny},
        text_config={"model_type": "opt", "vocab_size": len(vocab), "hidden_size": 32, "ffn_dim": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64,
                     "word_embed_proj_dim": 32, "pad_token_id": ids["<pad>"], "bos_token_id": ids["</s>"],
                     "eos_token_id": ids["</s>"]},
        num_query_tokens=NUM_QUERY_TOKENS, image_token_index=ids["<image>"], image_text_hidden_size=32,
        initializer_range=INIT_STD,
    )
    for sub in (config.vision_config, config.qformer_config, config.text_config):
        sub.initializer_range = INIT_STD
    config.text_config.init_std = INIT_STD  # OPT's own name for it
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        eos = model.language_model.get_output_embeddings().weight[ids["</s>"]]
        model.language_model.model.decoder.final_layer_norm.bias += EOS_PUSH * eos / eos.norm()
    return _save(model, processor, folder)


#: Florence-2's tokenizer: BART's special tokens, then the image token
BART_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<image>")
#: the words of the ``<CAPTION>`` task's question, "What does the image describe?"
QUESTION_WORDS = ("what", "does", "image", "describe", "?")
#: the end-of-caption bias of the tiny Florence-2 (BART's output layer has none either): the
#: logit of </s> is this plus a unit normal that depends on the image and the words so far
FLORENCE2_EOS_PUSH = 1.5
#: DaViT halves the grid at stages 2-4 after a stride-4 stem: 64 px -> 2x2 cells, plus one pooled token
FLORENCE2_IMAGE_TOKENS = (64 // 32) ** 2 + 1


def _word_level_tokenizer(vocab: dict[str, int], **special: str) -> Any:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    words.normalizer = normalizers.Lowercase()
    words.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=words, model_max_length=64, **special)


def write_tiny_florence2(folder: str | Path, seed: int = 0) -> Path:
    """Build and save the tiny Florence-2 (model, image processor, tokenizer) into ``folder``;
    returns the folder. The weights depend only on ``seed``."""
    import torch
    from transformers import CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(BART_SPECIALS + tuple(dict.fromkeys((*WORDS, *QUESTION_WORDS))))}
    ids = {tok: vocab[tok] for tok in BART_SPECIALS}
    tokenizer = _word_level_tokenizer(vocab, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                      unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False,
                                         image_seq_length=FLORENCE2_IMAGE_TOKENS)
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)

    config = Florence2Config(
        vision_config={"depths": [1, 1, 1, 1], "embed_dim": [16, 16, 32, 32], "num_heads": [1, 1, 2, 2],
                       "num_groups": [1, 1, 2, 2], "window_size": 2, "drop_path_rate": 0.0,
                       "projection_dim": 32, "max_position_embeddings": 8, "max_temporal_embeddings": 4,
                       "initializer_range": INIT_STD},
        text_config={"model_type": "bart", "vocab_size": len(vocab), "d_model": 32, "encoder_layers": 2,
                     "decoder_layers": 2, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
                     "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_position_embeddings": 64,
                     "pad_token_id": ids["<pad>"], "bos_token_id": ids["<s>"], "eos_token_id": ids["</s>"],
                     "decoder_start_token_id": ids["</s>"], "forced_eos_token_id": None, "init_std": INIT_STD,
                     "tie_word_embeddings": False},
        image_token_id=ids["<image>"], tie_word_embeddings=False,
    )
    # the model initialises from its top config, which has no initializer_range of its own
    config.initializer_range = INIT_STD
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # </s> scores a random direction u, and the decoder's last layer norm adds PUSH * u
        u = torch.nn.functional.normalize(torch.randn(config.text_config.d_model), dim=0)
        model.lm_head.weight[ids["</s>"]] = u
        model.model.language_model.decoder.layers[-1].final_layer_norm.bias += FLORENCE2_EOS_PUSH * u
    return _save(model, processor, folder)


def _save(model: Any, processor: Any, folder: Path) -> Path:
    """``save_pretrained`` of both into ``folder``, without transformers' progress bars."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return folder
