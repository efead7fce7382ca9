"""Low-level tools every layer uses: errors and argument checks, the effective mode, image
warps, rank statistics, and the uncertainty of probe means (docs/architecture.md, "Layers")."""
