"""Class-conditional face generators behind `registry.py` (kind -> train, save, final quality, sampler):
the GAN (gan_networks, diffaugment, gan_training, gan_sampling) and the diffusers comparison
(diffusion_model, diffusion_training, diffusion_sampling); `sampling.py` is the seeded-sampler
interface both share."""
