"""The training engine shared by train_cls and train_fea: one loop, one fold scheme, one export."""
