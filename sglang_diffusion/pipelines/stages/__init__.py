"""The stages native pipelines are made of (see `base.py`): validation, text encoding, image
encoding, latent preparation, timesteps, denoising, decoding. A family's pipeline file lists them."""
