"""Ray Train / Ray Tune jobs around gnp's per-worker loop. The only package that imports Ray."""
