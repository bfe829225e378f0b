"""Layer 6, training: the losses (`losses`), the shortcut-biased base model (`pretrain`), the DFR reference
(`dfr`), the arms and runs of fine-tuning (`runspec`) and the trainer itself (`trainer`)."""
