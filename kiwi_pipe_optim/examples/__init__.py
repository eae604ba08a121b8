"""Ready-made tasks for the training stage; the default one needs no download."""
