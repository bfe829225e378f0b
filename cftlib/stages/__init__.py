"""Layer 8, one module per pipeline step that has code of its own: the masks stage's grounding run (`ground`),
fine-tuning (`finetune`), evaluation on the world (`evaluate`) and on the paper's benchmarks (`benchmarks`), the
ablations (`ablations`), plus the notebook runner (`nbrun`) and the pre-flight checks (`preflight`)."""
