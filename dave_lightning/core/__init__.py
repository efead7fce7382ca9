"""Low-level tools every layer uses: errors and argument checks, the effective mode, image
warps, rank statistics and confidence intervals (docs/architecture.md, "Layers")."""
