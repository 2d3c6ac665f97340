"""QNet tests: model, encoding, training, scorer, server and client, value models."""
