"""Model bundles: their on-disk format (manifest, weights, card) and where they are found."""
