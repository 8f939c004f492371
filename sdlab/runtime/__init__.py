"""The Stable Diffusion runtime: the project's tiny model, its loader and the A1111-compatible server."""
