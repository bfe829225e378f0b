"""Layer 2, models: the timm factory (`factory`), the pretrained zoo of paper-scale models (`zoo`), and
checkpoints with the build configs that rebuild them (`checkpoints`)."""
