"""Real-width overrides for the seven families beyond LLaVA-1.5 and Qwen2/2.5-VL (see ``real_shapes.py``).

Each row: the public checkpoint whose widths are used (``like``), the overrides of the text config, the vision
config, the top-level config, the image processor and the processor keyword arguments. Depth is set by the script
(2 decoder + 2 vision layers). Nothing was downloaded: the values are the checkpoints' ``config.json`` /
``preprocessor_config.json`` values as known to the author, checked against copies of those files quoted in public
code (the ``search`` corpora of this project's tooling) where marked *checked*; *unchecked* marks values taken from
memory only. Values that change neither the shapes nor the token counts (RoPE bases, norms' epsilons, vocabulary:
the tiny tokenizer is kept) are left at the tiny checkpoint's.
"""

from __future__ import annotations

# LLaVA-OneVision's any-res grid: 1 to 6 tiles of 384 px a side, [height, width].
_OV_PINS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]

SPECS_MORE = {
    # llava-hf/llava-v1.6-mistral-7b-hf. Text = Mistral-7B-v0.2 (4096 wide, MLP 14336, 32 heads, 8 KV heads);
    # vision = CLIP ViT-L/14-336 (as LLaVA-1.5); grid pinpoints and 336 px tiles of the hf preprocessor.
    # Unchecked (no copy found in the corpora); the pinpoints are LLaVA-1.6's published ones.
    "llava_next": dict(
        like="llava-v1.6-mistral-7b",
        text=dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                  head_dim=128, max_position_embeddings=32768),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, image_size=336, patch_size=14,
                    projection_dim=768),
        top=dict(image_seq_length=576,
                 image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]),
        image_processor=dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                             image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]),
        processor=dict(patch_size=14)),
    # llava-hf/llava-onevision-qwen2-0.5b-ov-hf. Text = Qwen2-0.5B (896 wide, MLP 4864, 14 heads, 2 KV heads:
    # checked against a quoted Qwen2-0.5B config); vision = SigLIP-so400m-patch14-384 (1152 wide, MLP 4304, 16
    # heads); 384 px tiles, the 36 pinpoints 1x1..6x6 tiles (checked: a printed LlavaOnevisionImageProcessor),
    # 729 tokens a tile, anyres_max_9.
    "llava_onevision": dict(
        like="llava-onevision-qwen2-0.5b-ov",
        text=dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                  head_dim=64, max_position_embeddings=32768),
        vision=dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, image_size=384, patch_size=14),
        top=dict(image_grid_pinpoints=_OV_PINS),
        image_processor=dict(size={"height": 384, "width": 384}, image_grid_pinpoints=_OV_PINS),
        processor=dict(num_image_tokens=729)),
    # Qwen/Qwen3-VL-2B-Instruct. Text 2048 wide, MLP 6144, 16 heads, 8 KV heads, head 128, interleaved M-RoPE
    # [24, 20, 20]; vision 1024 wide, MLP 4096, 16 heads, 16 px patches, 2304 position embeddings, out 2048
    # (checked: quoted Qwen3-VL-2B/4B configs). Deepstack taps are [5, 11, 17] of 24 vision layers there; at 2
    # layers both are tapped. Processor: 256^2 to 4096^2 pixels, 16 px patches merged 2x2 (checked: quoted
    # preprocessor_config.json of the Qwen3-VL / Qwen3.5 series).
    "qwen3_vl": dict(
        like="Qwen3-VL-2B",
        text=dict(hidden_size=2048, intermediate_size=6144, num_attention_heads=16, num_key_value_heads=8,
                  head_dim=128, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                   "mrope_interleaved": True}),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048, patch_size=16,
                    num_position_embeddings=2304, deepstack_visual_indexes=[0, 1]),
        image_processor=dict(size={"shortest_edge": 65536, "longest_edge": 16777216}, patch_size=16,
                             merge_size=2)),
    # HuggingFaceTB/SmolVLM-Instruct (Idefics3 architecture). Text = SmolLM2-1.7B (2048 wide, MLP 8192, 32 heads,
    # 32 KV heads: unchecked); vision = SigLIP so400m at 384 px, 14 px patches; pixel shuffle by 3 -> 81 tokens
    # a 384 px crop; longest edge resized to 1536 (4 x 384), crops of 384 plus a global view (checked: a quoted
    # SmolVLM config/preprocessor pair: scale_factor 3, image_size 384, patch_size 14, 1536 / 384).
    "idefics3": dict(
        like="SmolVLM-Instruct (2B)",
        text=dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=32,
                  head_dim=64, max_position_embeddings=16384),
        vision=dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, image_size=384, patch_size=14),
        top=dict(scale_factor=3),
        image_processor=dict(size={"longest_edge": 1536}, max_image_size={"longest_edge": 384}),
        processor=dict(image_seq_len=81)),
    # google/gemma-3-4b-it. Text 2560 wide, MLP 10240, 8 heads, 4 KV heads, head 256, query_pre_attn_scalar 256,
    # sliding window 1024; vision SigLIP 1152 wide, MLP 4304, 16 heads, 896 px, 14 px patches, pooled to 256
    # tokens an image (checked: quoted gemma-3-4b-it configs). The 4B model's layers run 5 sliding : 1 full; the
    # 2 layers here are one of each. Pan-and-scan is off by default, so every image is one 896 px view.
    "gemma3": dict(
        like="gemma-3-4b-it",
        text=dict(hidden_size=2560, intermediate_size=10240, num_attention_heads=8, num_key_value_heads=4,
                  head_dim=256, query_pre_attn_scalar=256, sliding_window=1024, max_position_embeddings=131072,
                  layer_types=["sliding_attention", "full_attention"]),
        vision=dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, image_size=896, patch_size=14),
        top=dict(mm_tokens_per_image=256),
        image_processor=dict(size={"height": 896, "width": 896}),
        processor=dict(image_seq_length=256)),
    # OpenGVLab/InternVL3-1B-hf. Text = Qwen2.5-0.5B (896 wide, MLP 4864, 14 heads, 2 KV heads); vision =
    # InternViT-300M-448px (1024 wide, MLP 4096, 16 heads: checked against a printed InternVL3-1B model); 448 px
    # tiles, pixel shuffle 0.5 -> 256 tokens a tile, 1 to 12 tiles plus a thumbnail (max_patches 12: the value
    # InternVL's own pipelines pass; the hf preprocessor's value is unchecked).
    "internvl": dict(
        like="InternVL3-1B",
        text=dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                  head_dim=64, max_position_embeddings=32768),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, image_size=[448, 448],
                    patch_size=[14, 14]),
        top=dict(image_seq_length=256, downsample_ratio=0.5),
        image_processor=dict(size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1,
                             max_patches=12),
        processor=dict(image_seq_length=256)),
    # mistralai/Mistral-Small-3.1-24B-Instruct-2503. Text 5120 wide, MLP 32768, 32 heads, 8 KV heads, head 128;
    # vision Pixtral 1024 wide, MLP 4096, 16 heads of 64, 1540 px longest edge, 14 px patches merged 2x2
    # (checked: quoted config.json copies). One decoder layer of this width is 0.55B parameters.
    "mistral3": dict(
        like="Mistral-Small-3.1-24B",
        text=dict(hidden_size=5120, intermediate_size=32768, num_attention_heads=32, num_key_value_heads=8,
                  head_dim=128, max_position_embeddings=131072),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, head_dim=64, image_size=1540,
                    patch_size=14),
        top=dict(spatial_merge_size=2),
        image_processor=dict(size={"longest_edge": 1540}, patch_size={"height": 14, "width": 14}),
        processor=dict(patch_size=14, spatial_merge_size=2)),
}
