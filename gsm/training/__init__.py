"""Training: DSM losses, the DSM-SGD trainers (`dsm`, `fourier`) and background random draws (`prefetch`)."""
