"""The training engine shared by train_cls and train_fea: one loop, one fold scheme, one export."""
import os

# albumentations asks PyPI for a newer release when imported (a network call of up to 2 s); the
# harness never needs the network, and offline machines should not wait for it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
