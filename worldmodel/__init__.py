"""The generator: latent autoencoder, causal transformer with attention sink + rolling KV cache,
action/camera/text/image conditioning, few-step sampler, training and distillation."""
