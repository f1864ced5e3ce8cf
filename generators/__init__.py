"""Class-conditional face generators (GAN, diffusion). Nothing here yet: see the generators issue."""
