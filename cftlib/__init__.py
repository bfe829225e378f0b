"""cftlib: Concept-Guided Fine-Tuning (Elisha, Barkan, Koenigstein, CVPR 2026), reproducible.

One module per concept of the paper, in pipeline order: `world` (the synthetic benchmark),
`models` and `pretrain` (timm factory, checkpoints, the shortcut-biased base model), `concepts`
(proposers and the concept bank), `grounding` (concept masks) and `fewshot` (the k-shot protocol),
`relevance` (differentiable relevance maps), `losses` and `finetune` (CFT, RobustViT and baselines),
`evaluate` and `benchmarks` (metrics and paper-scale loaders), `figures` and `report` (plots, tables,
claims); plus `config` (validated params), `io` (atomic writes), `hub` (local/hub models),
`nbrun` (papermill runner) and `paths`.
"""

__version__ = "0.1.0"
