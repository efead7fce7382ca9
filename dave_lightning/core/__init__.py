"""Low-level tools every layer uses: the statistics of probe means (``uncertainty``)."""
