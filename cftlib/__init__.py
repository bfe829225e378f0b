"""cftlib: Concept-Guided Fine-Tuning (Elisha, Barkan, Koenigstein, CVPR 2026), reproducible.

One module per concept of the paper: `world` (the synthetic benchmark), `models` (timm factory and
checkpoints), `pretrain` (the shortcut-biased base model), `config`, `io`, `figures`, `nbrun`.
"""

__version__ = "0.1.0"
