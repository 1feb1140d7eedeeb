"""Tiny CPU configs for every registered method (tests and the reliability battery).

Every method in `hf_ssl.modeling.registry.METHODS` must have an entry here; `test_registry_has_tiny_configs`
fails loudly for a new method without one.
"""

TINY_RESNET = dict(model_type="resnet", layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)
TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                patch_size=8)

TINY_CONFIGS = {
    "pixpro": dict(backbone_config=TINY_RESNET, image_size=32, projection_hidden_dim=32, projection_dim=16),
    "sie": dict(backbone_config=TINY_RESNET, image_size=32, equivariant_dim=8, projection_dims=[32, 32]),
    "semaim": dict(backbone_config=TINY_VIT, image_size=32, target_blur_kernel_size=3),
    "mochi": dict(backbone_config=TINY_RESNET, image_size=32, projection_hidden_dim=32, projection_dim=16, queue_size=64,
                  num_hard_negatives=16, num_mixed_negatives=8, num_query_mixes=4, mixing_start_step=1),
    "gsimclr": dict(backbone_config=TINY_RESNET, image_size=32, projection_hidden_dims=[32, 16], projection_dim=16,
                    num_clusters=4, pseudo_label_interval=2, feature_bank_size=64, kmeans_iterations=5),
    "obow": dict(backbone_config=TINY_RESNET, image_size=32, num_words=16,
                 augmentation={"num_crops": 2, "crop_size": 24, "num_patches": 2, "patch_size": 16}),
    "interclr": dict(backbone_config=TINY_RESNET, image_size=32, projection_hidden_dim=32, projection_dim=16,
                     queue_length=16, memory_bank_size=64, num_clusters=4, kmeans_interval=2, kmeans_iterations=5,
                     inter_start_step=1, num_negatives=8, semihard_rank_range=[0, 16]),
    "fsfm": dict(backbone_config=TINY_VIT, image_size=32, region_source="grid", rep_decoder_depth=1,
                 rep_decoder_num_heads=2, decoder_hidden_size=32, decoder_depth=1, decoder_num_heads=2,
                 projection_dim=16, projection_hidden_dim=32),
    "umd": dict(backbone_config=TINY_VIT, image_size=32, decoder_depth=1, num_timesteps=100),
    "clip": dict(backbone_config=TINY_RESNET, image_size=32, projection_dim=16,
                 text_config=dict(model_type="clip_text_model", vocab_size=600, hidden_size=16, intermediate_size=32,
                                  num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                  bos_token_id=0, eos_token_id=1, pad_token_id=2), tokenizer_vocab_size=600),
    "swav": dict(backbone_config=TINY_RESNET, image_size=32, num_prototypes=16, projection_hidden_dim=32,
                 projection_dim=16, freeze_prototypes_steps=0,
                 augmentation={"num_global": 2, "num_local": 2, "local_size": 16}),
    "cae": dict(backbone_config=TINY_VIT, image_size=32, regressor_depth=1, decoder_depth=1, decoder_num_heads=2,
                augmentation={"min_block_patches": 2}),
    "mfm": dict(backbone_config=TINY_RESNET, image_size=32, mask_radius=4),
    "satvision": dict(backbone_config=TINY_VIT, image_size=32, num_channels=3, mask_patch_size=16),
    "cropmae": dict(backbone_config=TINY_VIT, image_size=32, mask_ratio=0.75, decoder_hidden_size=32, decoder_depth=1,
                    decoder_num_heads=2, decoder_mlp_dim=64),
    "croco": dict(backbone_config=TINY_VIT, image_size=32, mask_ratio=0.75, decoder_hidden_size=32, decoder_depth=1,
                  decoder_num_heads=2),
    "genview": dict(backbone_config=TINY_VIT, image_size=32, projection_hidden_dim=32, projection_dim=16,
                    predictor_hidden_dim=32, contrastive_temperature=0.2),
    "chada_vit": dict(backbone_config=TINY_VIT, image_size=32, head_out_dim=64, head_hidden_dim=32,
                      head_bottleneck_dim=16, augmentation={"num_local": 1, "local_size": 16}),
    "groco": dict(backbone_config=TINY_RESNET, image_size=32, projection_hidden_dim=32, projection_dim=16,
                  num_negatives=2),
    "rpp": dict(backbone_config=TINY_RESNET, image_size=32, projection_hidden_dim=32, projection_dim=16,
                gate_hidden_dim=16, augmentation={"pair_buffer_size": 8}),
    "sit": dict(backbone_config=TINY_VIT, image_size=32, projection_hidden_dim=32, projection_dim=16, drop_align=4),
    "mixedae": dict(backbone_config=TINY_VIT, image_size=32, decoder_hidden_size=32, decoder_depth=1,
                    decoder_num_heads=2),
    "denseclip": dict(backbone_config=TINY_RESNET, image_size=32, projection_dim=16, tokenizer_vocab_size=600,
                      text_config=dict(model_type="clip_text_model", vocab_size=600, hidden_size=16,
                                       intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=2),
                      num_context_tokens=4, context_decoder_width=16, context_decoder_heads=2,
                      context_decoder_layers=1, fpn_channels=16),
    "composed_retrieval": dict(backbone_config=TINY_RESNET, image_size=32, projection_dim=16, tokenizer_vocab_size=600,
                               text_config=dict(model_type="clip_text_model", vocab_size=600, hidden_size=16,
                                                intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                                                pad_token_id=2),
                               num_prompt_tokens=4, caption_length=24, prompt_generator_layers=1,
                               prompt_generator_heads=2, freeze_image_encoder=False),
    "align": dict(backbone_config=dict(model_type="efficientnet", width_coefficient=0.1, depth_coefficient=0.1,
                                       image_size=32, hidden_dim=128), image_size=32, tokenizer_vocab_size=600,
                  text_config=dict(model_type="bert", vocab_size=600, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                   pad_token_id=2)),
    "dreamlip": dict(backbone_config=TINY_VIT, image_size=32, projection_dim=16, num_subcaptions=2,
                     text_config=dict(model_type="clip_text_model", vocab_size=600, hidden_size=16,
                                      intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=2),
                     tokenizer_vocab_size=600),
}


def tiny_config(name, **overrides):
    from hf_ssl.modeling.registry import get_method

    kwargs = dict(TINY_CONFIGS[name])
    kwargs.update(overrides)
    return get_method(name).config_class(**kwargs)
