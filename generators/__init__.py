"""Class-conditional face generators: config, GAN networks, DiffAugment, GAN training loop, quality
readings (GAN-test, KID), seeded sampling behind one `ConditionalSampler` interface; the diffusion
alternative lives in `generators.diffusion`."""
