"""A tiny random vision-language model for llama-server, written at test time (no
weights are downloaded, no torch): the text model of :func:`tests.genserver.write_tiny_gguf`
plus a LLaVA-style multimodal projector file (``mmproj``) that llama.cpp's ``mtmd``
library loads with ``--mmproj``, so ``/v1/chat/completions`` takes
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`` parts.

* :func:`write_tiny_mmproj`: a CLIP-style vision encoder (32x32 px images, 8 px patches,
  so 16 image tokens; width 32, 2 heads, 2 blocks, a CLS embedding) and llama.cpp's
  ``mlp`` projector (``mm.0`` -> GELU -> ``mm.2``) onto the text model's width.
* :func:`write_tiny_vlm`: both files in one folder, byte-identical for a seed.
* :func:`png`: a PNG of seeded random pixels (or one colour), to send as an image.

Like LLaVA, the ``mlp`` projector reads the vision encoder's second-to-last block, so
of the 2 blocks only the first runs; the last is there because llama.cpp counts from it.
llama.cpp resizes any image to 32x32 and normalizes it with mean and std 0.5.

Images must move the output, so the vision side is not scaled like the text model
(std 0.02): its weights have std ``1/sqrt(fan_in)``, which keeps activations near unit
scale through the projector. The projected image embeddings are then larger than the
text model's token embeddings; every text block starts with an RMS norm, so they are
read, not drowned. At temperature 0, with :data:`tests.genserver.NO_EOS` so the
random model keeps talking, two images give different text and one image the same text
(``tests/test_genvision.py``).

What llama-server reports when the projector is loaded: ``/props`` ->
``"modalities": {"vision": true, ...}`` and ``/v1/models`` -> ``"models"[0]
["capabilities"]`` containing ``"multimodal"`` (``["completion"]`` alone without it).
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

from tests.genserver import finish_gguf, write_tiny_gguf

#: the projector's pixel grid: llama.cpp resizes every image to this square
IMAGE_SIZE = 32
#: the side of one patch: an image costs (IMAGE_SIZE // PATCH_SIZE) ** 2 prompt tokens
PATCH_SIZE = 8
#: prompt tokens one image takes in the text model (no begin/end markers for ``mlp``)
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2


def write_tiny_mmproj(path: Path | str, seed: int = 0, *, n_embd_text: int = 64, n_embd: int = 32,
                      n_head: int = 2, n_ff: int = 64, n_layer: int = 2) -> Path:
    """Write a random LLaVA-style projector GGUF (``general.architecture = "clip"``,
    ``clip.projector_type = "mlp"``) at ``path`` and return it. Same ``seed``, same bytes.

    ``n_embd_text`` must be the text model's width (llama-server refuses a mismatch).
    Key and tensor names are llama.cpp's (``tools/mtmd/clip-impl.h``); numpy shapes are
    ``(out, in)``, the patch convolution ``(n_embd, 3, PATCH_SIZE, PATCH_SIZE)``. All
    f32; LayerNorm weights 1 and biases 0, linear biases 0."""
    import gguf
    import numpy as np

    if n_ff == n_embd:
        # llama.cpp takes an ffn_down of width n_embd for a legacy swapped pair
        raise ValueError(f"n_ff must differ from n_embd ({n_embd})")
    path = Path(path)
    n_pos = IMAGE_TOKENS + 1  # the patches and the CLS embedding

    w = gguf.GGUFWriter(path, "clip")
    w.add_name(f"curate-tiny-random-mmproj-{seed}")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("general.file_type", int(gguf.LlamaFileType.ALL_F32))
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    w.add_uint32("clip.vision.patch_size", PATCH_SIZE)
    w.add_uint32("clip.vision.embedding_length", n_embd)
    w.add_uint32("clip.vision.feed_forward_length", n_ff)
    w.add_uint32("clip.vision.block_count", n_layer)
    w.add_uint32("clip.vision.projection_dim", n_embd_text)
    w.add_uint32("clip.vision.attention.head_count", n_head)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    rng = np.random.default_rng([seed, 1])  # not the text model's stream

    def rand(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    ones = functools.partial(np.ones, dtype=np.float32)
    zeros = functools.partial(np.zeros, dtype=np.float32)
    w.add_tensor("v.patch_embd.weight", rand(n_embd, 3, PATCH_SIZE, PATCH_SIZE))
    w.add_tensor("v.patch_embd.bias", zeros(n_embd))
    w.add_tensor("v.class_embd", rand(n_embd))
    w.add_tensor("v.position_embd.weight", rand(n_pos, n_embd))
    w.add_tensor("v.pre_ln.weight", ones(n_embd))
    w.add_tensor("v.pre_ln.bias", zeros(n_embd))
    for b in range(n_layer):
        for norm in ("ln1", "ln2"):
            w.add_tensor(f"v.blk.{b}.{norm}.weight", ones(n_embd))
            w.add_tensor(f"v.blk.{b}.{norm}.bias", zeros(n_embd))
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(f"v.blk.{b}.{proj}.weight", rand(n_embd, n_embd))
            w.add_tensor(f"v.blk.{b}.{proj}.bias", zeros(n_embd))
        w.add_tensor(f"v.blk.{b}.ffn_up.weight", rand(n_ff, n_embd))
        w.add_tensor(f"v.blk.{b}.ffn_up.bias", zeros(n_ff))
        w.add_tensor(f"v.blk.{b}.ffn_down.weight", rand(n_embd, n_ff))
        w.add_tensor(f"v.blk.{b}.ffn_down.bias", zeros(n_embd))
    w.add_tensor("mm.0.weight", rand(n_embd_text, n_embd))
    w.add_tensor("mm.0.bias", zeros(n_embd_text))
    w.add_tensor("mm.2.weight", rand(n_embd_text, n_embd_text))
    w.add_tensor("mm.2.bias", zeros(n_embd_text))

    return finish_gguf(w, path)


def write_tiny_vlm(dir: Path | str, seed: int = 0) -> tuple[Path, Path]:
    """Write ``model.gguf`` (the tiny random llama, width 64) and ``mmproj.gguf`` (its
    projector) in ``dir`` and return both paths; serve them with
    ``serve(model, extra_args=["--mmproj", str(mmproj)])``. Same seed, same bytes."""
    dir = Path(dir)
    model = write_tiny_gguf(dir / "model.gguf", seed=seed, n_embd=64)
    mmproj = write_tiny_mmproj(dir / "mmproj.gguf", seed=seed, n_embd_text=64)
    return model, mmproj


def png(seed: int | None = None, *, size: int = IMAGE_SIZE, color: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    """PNG bytes of a ``size``-pixel square RGB image: seeded random pixels, or one
    ``color`` when ``seed`` is None."""
    import numpy as np
    from PIL import Image

    if seed is None:
        img = Image.new("RGB", (size, size), color)
    else:
        pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
        img = Image.fromarray(pixels, "RGB")
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()
